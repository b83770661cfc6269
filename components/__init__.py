"""Pulumi ComponentResources for fleetid on AWS, one per file.

- `IdentityServer`: the identity server on Lambda, its table, revisions bucket, key custody,
  role and logs (`CustomDomain` puts it under a domain of the team's own);
- `Vault`: the connections vault's KMS key and the connection secrets provisioned into it;
- `AgentClient`: an agent's client credentials; alone, a directory entry for an agent that
  runs elsewhere; `ResourceClient`: those of a resource's server that introspects;
- `AgentRuntime`: an agent on AgentCore Runtime, trusting fleetid's tokens;
- `Gateway`: an MCP gateway on AgentCore Gateway for the agents it lists;
- `RevisionRelease`: the revision object, the pointer that makes it live, and the policy
  change in words.

`__main__.py` reads the fleet through fleetid and wires these; it decides nothing else.
"""

from components.agent_client import (
    AgentClient,
    AgentClientArgs,
    ResourceClient,
    ResourceClientArgs,
)
from components.agent_runtime import AgentRuntime, AgentRuntimeArgs
from components.gateway import Gateway, GatewayArgs
from components.identity_server import IdentityServer, IdentityServerArgs, LambdaCode, ServerLink
from components.revision_release import PREVIOUS_OUTPUT, RevisionRelease, RevisionReleaseArgs
from components.vault import MissingConnectionSecret, Vault, VaultArgs, provisioned_secrets

__all__ = [
    "PREVIOUS_OUTPUT",
    "AgentClient",
    "AgentClientArgs",
    "AgentRuntime",
    "AgentRuntimeArgs",
    "Gateway",
    "GatewayArgs",
    "IdentityServer",
    "IdentityServerArgs",
    "LambdaCode",
    "MissingConnectionSecret",
    "ResourceClient",
    "ResourceClientArgs",
    "RevisionRelease",
    "RevisionReleaseArgs",
    "ServerLink",
    "Vault",
    "VaultArgs",
    "provisioned_secrets",
]
