"""RevisionRelease: putting a compiled revision live, and saying in words what it changes.

What it deploys:

- the revision object `revisions/<hash>.json`, named by its hash and kept when a later
  revision replaces it (`retain_on_delete`), so that a rollback is a pointer switch to an
  object that is still there;
- the pointer `revisions/live`, written last, after everything the revision needs is in
  place (the agents' client secret digests, the vault's secrets): the servers follow it
  within `revision_check_seconds`, switching the whole revision at once.

And what it says: `pulumi preview` logs, in the words of `fleetid diff`, who gains and who
loses which access compared with the revision this stack last deployed. That revision is read
from this stack's own previous outputs (a `StackReference` to itself), where each deployment
leaves its revision object packed; the text is also the `policy_change` output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from components.identity_server import ServerLink
from fleetid.deploy.revision import (
    POINTER_KEY,
    RevisionDeliveryError,
    pack_document,
    pointer_document,
    read_revision_document,
    revision_document,
    revision_key,
    unpack_document,
)
from fleetid.fleet.compile import Revision
from fleetid.fleet.diff import diff_revisions, render_text
from fleetid.fleet.load import FleetSources

__all__ = ["PREVIOUS_OUTPUT", "RevisionRelease", "RevisionReleaseArgs", "describe_change"]

# The stack output where each deployment leaves its revision object for the next preview.
PREVIOUS_OUTPUT = "revisionArchive"


@dataclass
class RevisionReleaseArgs:
    """The revision and the sources it was compiled from, which the object carries."""

    revision: Revision
    sources: FleetSources
    server: ServerLink
    # Resources that must exist before the pointer makes the revision live.
    after: Sequence[pulumi.Resource] = field(default_factory=list)
    compare_with_deployed: bool = True


class RevisionRelease(pulumi.ComponentResource):
    archive: pulumi.Output[str]
    policy_change: pulumi.Output[str]

    def __init__(
        self, name: str, args: RevisionReleaseArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("fleetid:index:RevisionRelease", name, None, opts)
        revision, server = args.revision, args.server
        document = revision_document(args.sources, revision.hash)

        # Immutable: a new revision is a new key, and the old object stays behind.
        revision_object = aws.s3.BucketObjectv2(
            f"{name}-object",
            bucket=server.bucket_name,
            key=revision_key(revision.hash),
            content=document.decode("utf-8"),
            content_type="application/json",
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
        )

        # The switch. Servers cache nothing of it beyond their check interval.
        aws.s3.BucketObjectv2(
            f"{name}-pointer",
            bucket=server.bucket_name,
            key=POINTER_KEY,
            content=server.issuer.apply(
                lambda issuer: pointer_document(revision.hash, issuer).decode("utf-8")
            ),
            content_type="application/json",
            cache_control="no-store",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[revision_object, *args.after]),
        )

        self.archive = pulumi.Output.from_input(pack_document(document))
        if args.compare_with_deployed:
            deployed = pulumi.StackReference(
                f"{name}-deployed",
                stack_name=(
                    f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}"
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.policy_change = deployed.get_output(PREVIOUS_OUTPUT).apply(
                lambda packed: self._announce(describe_change(packed, revision))
            )
        else:
            self.policy_change = pulumi.Output.from_input(
                f"revision {revision.short}; not compared with the deployed revision"
            )

        self.register_outputs({"archive": self.archive, "policy_change": self.policy_change})

    def _announce(self, text: str) -> str:
        if pulumi.runtime.is_dry_run():
            pulumi.log.info(text, resource=self)

        return text


def describe_change(packed: Any, head: Revision) -> str:
    """In words, what deploying `head` changes compared with the packed deployed revision."""
    if not packed:
        summary = head.summary()
        return (
            f"No revision of this stack is deployed yet; {head.short} will be the first "
            f"({summary['agents']} agents, {summary['resources']} resources, "
            f"{summary['policy_rules']} policy rules).\n"
        )

    try:
        base = read_revision_document(unpack_document(str(packed)))
    except RevisionDeliveryError as failure:
        return f"The deployed revision could not be read ({failure}); no policy diff.\n"

    if base.hash == head.hash:
        return f"Policy unchanged: revision {head.short} is the one deployed.\n"

    return render_text(diff_revisions(base, head))
