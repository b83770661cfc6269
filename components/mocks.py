"""Running the Pulumi program without the engine, under Pulumi's own mocks.

There is no Pulumi CLI where fleetid is built, so the tests and the benchmark run the program
this way. `run_program` runs `__main__.py` as `pulumi up` (or `pulumi preview`) would, with
the mock monitor in place of the engine: each resource's inputs are recorded as the engine
would receive them (camelCase names, secrets still wrapped), `FleetMocks` answers with
plausible AWS outputs (ARNs, names, a Function URL, generated passwords, ciphertexts), and
the stack's outputs are resolved with their secretness.

Nothing here is used by `pulumi up` itself.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import runpy
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.settings import get_root_resource, set_root_resource

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = ROOT / "__main__.py"
ACCOUNT = "123456789012"
REGION = "us-east-1"
DEPLOYER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/deployer"
FUNCTION_URL = "https://abcdefghijklmnop.lambda-url.us-east-1.on.aws/"


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    custom: bool

    def plain(self, key: str) -> Any:
        return plain(self.inputs.get(key))


@dataclass
class Deployment:
    resources: list[Registered]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    messages: list[str] = field(default_factory=list)

    def of_type(self, token: str) -> list[Registered]:
        return [resource for resource in self.resources if resource.type == token]

    def named(self, token: str, name: str) -> Registered:
        (found,) = [resource for resource in self.of_type(token) if resource.name == name]
        return found

    @property
    def custom(self) -> list[Registered]:
        return [resource for resource in self.resources if resource.custom]


def is_secret(value: Any) -> bool:
    return rpc.is_rpc_secret(value)


def plain(value: Any) -> Any:
    """`value` with every secret wrapper removed."""
    if rpc.is_rpc_secret(value):
        return plain(value["value"])
    if isinstance(value, dict):
        return {key: plain(child) for key, child in value.items()}
    if isinstance(value, list):
        return [plain(child) for child in value]
    return value


def exposed_strings(value: Any, *, under_secret: bool = False) -> Iterable[tuple[str, bool]]:
    """Every string in an input, and whether a secret wrapper covers it."""
    if rpc.is_rpc_secret(value):
        yield from exposed_strings(value["value"], under_secret=True)
    elif isinstance(value, dict):
        for child in value.values():
            yield from exposed_strings(child, under_secret=under_secret)
    elif isinstance(value, list):
        for child in value:
            yield from exposed_strings(child, under_secret=under_secret)
    elif isinstance(value, str):
        yield value, under_secret


class FleetMocks(pulumi.runtime.Mocks):
    """Plausible AWS answers: ARNs, names, a Function URL, generated passwords, ciphertexts."""

    def __init__(self, deployed_outputs: Mapping[str, Any] | None = None) -> None:
        self.resources: list[Registered] = []
        self.deployed_outputs = dict(deployed_outputs or {})

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs = dict(args.inputs)
        token, name = args.typ, args.name
        service = token.split(":")[1].split("/")[0] if ":" in token else "component"
        outputs.setdefault("arn", f"arn:aws:{service}:{REGION}:{ACCOUNT}:{name}")
        outputs.setdefault("name", f"{name}-{_suffix(name)}")

        if token == "pulumi:pulumi:StackReference":
            outputs = {
                "name": args.inputs.get("name"),
                "outputs": self.deployed_outputs,
                "secretOutputNames": [],
            }
        elif token == "random:index/randomPassword:RandomPassword":
            outputs["result"] = _password(name, int(args.inputs.get("length", 43)))
        elif token == "aws:lambda/functionUrl:FunctionUrl":
            outputs["functionUrl"] = FUNCTION_URL
        elif token == "aws:s3/bucket:Bucket":
            outputs["bucket"] = f"{name}-{_suffix(name)}"
            outputs["arn"] = f"arn:aws:s3:::{outputs['bucket']}"
        elif token == "aws:iam/role:Role":
            outputs["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{outputs['name']}"
        elif token == "aws:kms/key:Key":
            outputs["keyId"] = _suffix(name)
            outputs["arn"] = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{_suffix(name)}"
        elif token == "aws:kms/ciphertext:Ciphertext":
            outputs["ciphertextBlob"] = "AQICAH" + _suffix(name)
        elif token == "aws:dynamodb/table:Table":
            outputs["arn"] = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{outputs['name']}"
        elif token == "aws:cloudwatch/logGroup:LogGroup":
            outputs["arn"] = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{outputs['name']}"
        elif token == "aws:secretsmanager/secret:Secret":
            outputs["arn"] = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}-AbCdEf"
        elif token == "aws:bedrock/agentcoreGateway:AgentcoreGateway":
            outputs["gatewayId"] = f"gw-{_suffix(name)}"
            outputs["gatewayUrl"] = f"https://gw-{_suffix(name)}.gateway.example/mcp"
        elif token == "aws:bedrock/agentcoreAgentRuntime:AgentcoreAgentRuntime":
            outputs["agentRuntimeArn"] = f"arn:aws:bedrock-agentcore:{REGION}:{ACCOUNT}:{name}"
        elif token == "aws:cloudfront/distribution:Distribution":
            outputs["domainName"] = "d111111abcdef8.cloudfront.net"

        self.resources.append(
            Registered(token, name, dict(args.inputs), outputs, bool(args.custom))
        )
        return f"{name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        answers: dict[str, dict[str, Any]] = {
            "aws:index/getCallerIdentity:getCallerIdentity": {
                "accountId": ACCOUNT,
                "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/ci",
                "userId": "AROAEXAMPLE:ci",
                "id": ACCOUNT,
            },
            "aws:iam/getSessionContext:getSessionContext": {
                "arn": args.args.get("arn"),
                "issuerArn": DEPLOYER_ROLE,
                "issuerId": "AROAEXAMPLE",
                "issuerName": "deployer",
                "sessionName": "ci",
                "id": "ci",
            },
            "aws:index/getRegion:getRegion": {"region": REGION, "name": REGION, "id": REGION},
            "aws:index/getPartition:getPartition": {
                "partition": "aws",
                "dnsSuffix": "amazonaws.com",
                "id": "aws",
            },
        }
        return answers.get(args.token, {}), []


def lambda_archive(folder: Path, architecture: str = "arm64") -> Path:
    """A tiny archive with the manifest the program reads its architecture from."""
    path = folder / "lambda.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "fleetid-lambda.json",
            f'{{"architecture": "{architecture}", "handler": "h", "python": "3.12"}}',
        )
    return path


def run_program(
    fleet: Path,
    *,
    config: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    preview: bool = False,
    deployed_outputs: Mapping[str, Any] | None = None,
    archive: Path | None = None,
    mocks: FleetMocks | None = None,
) -> Deployment:
    """Run `__main__.py` on `fleet` under mocks; `secrets` are config keys set with --secret.

    Pass `mocks` to look at what was registered when the program raises.
    """
    mocks = mocks or FleetMocks(deployed_outputs)
    messages: list[str] = []
    logger = logging.Logger("pulumi-mocks", level=logging.INFO)
    logger.addHandler(_Collect(messages))

    set_root_resource(None)  # type: ignore[arg-type]
    pulumi.runtime.set_mocks(
        mocks, project="fleetid", stack="test", preview=preview, logger=logger
    )
    values = {"fleetid:fleet": str(fleet)}
    if archive is not None:
        values["fleetid:lambdaArchive"] = str(archive)
    values.update(config or {})
    values.update(secrets or {})
    pulumi.runtime.set_all_config(values, list(secrets or {}))

    collected: dict[str, tuple[Any, bool]] = {}

    @pulumi.runtime.test
    def program() -> Any:
        # The program turns the cyclic collector off for its own short life; a test
        # process that runs it goes on afterwards.
        collecting = gc.isenabled()
        try:
            runpy.run_path(str(PROGRAM), run_name="__main__")
        finally:
            if collecting:
                gc.enable()
        stack = get_root_resource()
        return pulumi.Output.from_input(_collect(getattr(stack, "outputs", {}), collected))

    program()
    return Deployment(
        resources=mocks.resources,
        outputs={name: value for name, (value, _) in collected.items()},
        secret_outputs={name for name, (_, secret) in collected.items() if secret},
        messages=messages,
    )


async def _collect(outputs: Mapping[str, Any], into: dict[str, tuple[Any, bool]]) -> None:
    await asyncio.sleep(0)
    for name, value in outputs.items():
        output = pulumi.Output.from_input(value)
        into[name] = (await output.future(), await output.is_secret())


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def _suffix(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def _password(name: str, length: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    seed = hashlib.sha256(f"password:{name}".encode()).digest() * 4
    return "".join(alphabet[byte % len(alphabet)] for byte in seed[:length])
