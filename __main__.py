"""The Pulumi program: read the fleet through fleetid, then wire the components.

Until the components land this only loads, validates and compiles the fleet, so that
`pulumi preview` fails on an invalid fleet before anything is planned, and exports the
revision it would deploy.
"""

import pulumi

from fleetid.fleet.compile import compile_sources
from fleetid.fleet.load import read_sources

config = pulumi.Config("fleetid")
revision = compile_sources(read_sources(config.get("fleet") or "fleet.yaml"))

pulumi.export("revision", revision.hash)
pulumi.export("agents", sorted(revision.fleet.agents))
