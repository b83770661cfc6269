"""The Pulumi program: read the fleet through fleetid, then wire the components.

Configuration (`pulumi config set fleetid:<key> <value>`): `fleet` (fleet.yaml), `lambdaArchive`
(build/lambda.zip), `domain` and `certificateArn` (a custom domain), `logRetentionDays` (30);
and, as secrets, every connection secret fleet.yaml names with `config:`.
"""

import gc

import pulumi

from components import (
    PREVIOUS_OUTPUT,
    AgentClient,
    AgentClientArgs,
    AgentRuntime,
    AgentRuntimeArgs,
    Gateway,
    GatewayArgs,
    IdentityServer,
    IdentityServerArgs,
    LambdaCode,
    ResourceClient,
    ResourceClientArgs,
    RevisionRelease,
    RevisionReleaseArgs,
    Vault,
    VaultArgs,
    provisioned_secrets,
)
from fleetid.fleet.compile import compile_sources
from fleetid.fleet.load import read_sources

# NOTE: the program holds every resource it registers until it ends and forms no cycles
# worth collecting; the cyclic collector would only walk that growing heap again and again,
# which makes a large fleet's program grow faster than its resource count.
gc.disable()

config = pulumi.Config("fleetid")
sources = read_sources(config.get("fleet") or "fleet.yaml")
revision = compile_sources(sources)
# Before anything is created: every connection secret must be in config, as a secret.
secrets = provisioned_secrets(revision)

server = IdentityServer(
    "identity",
    IdentityServerArgs(
        revision,
        LambdaCode.from_build(config.get("lambdaArchive") or "build/lambda.zip"),
        domain=config.get("domain"),
        certificate_arn=config.get("certificateArn"),
        log_retention_days=config.get_int("logRetentionDays") or 30,
    ),
)
vault = Vault("vault", VaultArgs(revision, server.link, secrets))

runtimes, elsewhere = {}, {}
for name, agent in sorted(revision.fleet.agents.items()):
    if agent.runtime == "agentcore":
        runtimes[name] = AgentRuntime(name, AgentRuntimeArgs(revision, name, server.link))
    else:
        elsewhere[name] = AgentClient(name, AgentClientArgs(name, server.link))
gateways = {
    name: Gateway(name, GatewayArgs(revision, name, server.link))
    for name in sorted(revision.fleet.gateways)
}
introspecting = {
    name: ResourceClient(name, ResourceClientArgs(name, server.link))
    for name, resource in sorted(revision.fleet.resources.items())
    if resource.introspection
}

release = RevisionRelease(
    "revision",
    RevisionReleaseArgs(
        revision,
        sources,
        server.link,
        after=[vault, *runtimes.values(), *elsewhere.values(), *introspecting.values()],
    ),
)

pulumi.export("issuer", server.issuer)
pulumi.export("discoveryUrl", server.discovery_url)
pulumi.export("jwksUrl", server.jwks_url)
pulumi.export("dnsTarget", server.dns_target)
pulumi.export("revision", revision.hash)
pulumi.export("revisionsBucket", server.link.bucket_name)
pulumi.export("policyChange", release.policy_change)
pulumi.export(PREVIOUS_OUTPUT, release.archive)
pulumi.export("runtimes", {name: runtime.runtime_arn for name, runtime in runtimes.items()})
pulumi.export("gateways", {name: gateway.gateway_url for name, gateway in gateways.items()})
pulumi.export(
    "clients",
    pulumi.Output.secret(
        {
            name: {"client_id": client.client_id, "client_secret": client.client_secret}
            for name, client in elsewhere.items()
        }
    ),
)
pulumi.export(
    "resourceClients",
    pulumi.Output.secret(
        {
            name: {"client_id": client.client_id, "client_secret": client.client_secret}
            for name, client in introspecting.items()
        }
    ),
)
