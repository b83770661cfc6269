"""fleetid: identity for fleets of AI agents, declared in one fleet.yaml."""

__version__ = "0.1.0"
