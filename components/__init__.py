"""Pulumi ComponentResources for fleetid: identity server, vault, agent runtime, gateway.

None are written yet; `__main__.py` only validates and compiles the fleet for now.
"""
