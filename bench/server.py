"""Token endpoint throughput: fleetid beside node-oidc-provider, in the same run.

    python -m bench.server [--seconds 10] [--connections 32] [--rounds 2]

The peer (`../shared/peers/oidc-provider`, an OpenID Certified server) is driven by its own
`bench.sh`; fleetid's `fleetid serve` by wrk with the peer's `token.lua`, one server
process each, one after the other, alternating over the rounds so that a noisy neighbour
hurts both. Measured for fleetid: client credentials, and token exchange (a user's sign-in
token for a CRM token, through client authentication, subject-token verification, the
sign-in grant lookup, the decision and the audit line) — each with RS256, the peer's
algorithm, and with ES256 on a resource that asks for it. The table prints rps, p50 and
p99, each row's throughput as a ratio of the peer's client credentials, and the CPU the
server process used (read from /proc over the middle of each load): cores busy, and CPU
microseconds per token, and the share of the machine's CPU that its hypervisor took
meanwhile. The peer signs on Node's thread pool and can use more than one core; one fleetid
process runs Python on one. Under the table: the goal, met or missed by each token exchange
row, and the signing rate of one core here, measured before the loads with the library and
key sizes the server uses, which bounds what any single core can issue; last, the
interpreter fleetid ran on. A ratio near the goal can be met in one run and missed in the
next: read several.

One more row, beside the goal rather than in it: the same peer signing ES256, so that
fleetid's ES256 rows can also be read against the same algorithm. It is the peer's own
`server.js`, rewritten in the copy to sign with an EC key, and driven with the same wrk
command as `bench.sh`; if the peer's source no longer has the line it rewrites, the row is
left out with a note.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import yaml

from fleetid.keys.algorithms import (
    Algorithm,
    PrivateKey,
    generate_private_key,
    sign_with_private_key,
)
from fleetid.login import login

ROOT = Path(__file__).resolve().parent.parent
PEER_SOURCE = ROOT.parent / "shared" / "peers" / "oidc-provider"
PEER_COPY = ROOT / "bench" / "out" / "oidc-provider"
# What `make` installed fleetid in: the benchmark runs the server as installed.
VENV_BIN = ROOT / ".venv" / "bin"
CRM = "https://crm.acme.example.com"
CRM_ES256 = "https://crm-es256.acme.example.com"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
PEER_ROW = "peer client_credentials RS256"
PEER_ES256_ROW = "peer client_credentials ES256"
EXCHANGE_RS256_ROW = "fleetid token exchange RS256"
EXCHANGE_ES256_ROW = "fleetid token exchange ES256"
# The throughput the goal asks of the token exchange, as a multiple of the peer's.
GOAL = 1.5
_FIGURES = re.compile(r"p50_ms=([\d.]+) p99_ms=([\d.]+) rps=(\d+) non2xx=(\d+)")


@dataclass
class Figures:
    rps: float
    p50: float
    p99: float
    failures: int
    cores: float | None = None
    stolen: float | None = None


class _CpuWatch:
    """The cores used by the processes whose command line contains `marker`, measured
    from a fifth to four fifths of a load that lasts `seconds`: start-up and the last
    connections are left out. Over the same window, the share of the machine's CPU time
    that its hypervisor gave to other guests ("steal" in proc(5)), which tells a slow round
    on a shared host from a slow server."""

    def __init__(self, marker: str, seconds: int) -> None:
        self.marker = marker
        self.seconds = seconds
        self.cores: float | None = None
        self.stolen: float | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _CpuWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.join()

    def _ticks(self) -> dict[str, int]:
        ticks = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                if self.marker.encode() not in command:
                    continue
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # utime and stime, the 14th and 15th fields of proc(5), summed over all threads.
            ticks[pid] = int(fields[11]) + int(fields[12])
        return ticks

    @staticmethod
    def _machine() -> tuple[int, int]:
        """The machine's CPU time so far, and the part of it stolen, in ticks."""
        # The first line of /proc/stat: user nice system idle iowait irq softirq steal,
        # then guest times that user already counts.
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        fields = [int(field) for field in first[1:9]]
        if first[:1] != ["cpu"] or len(fields) < 8:
            return 0, 0
        return sum(fields), fields[7]

    def _watch(self) -> None:
        if not Path("/proc/self/stat").exists():
            return
        time.sleep(self.seconds * 0.2)
        before, machine_before, started = self._ticks(), self._machine(), time.monotonic()
        time.sleep(self.seconds * 0.6)
        after, machine_after = self._ticks(), self._machine()
        elapsed = time.monotonic() - started
        used = sum(after[pid] - before[pid] for pid in after.keys() & before.keys())
        if before:
            self.cores = used / os.sysconf("SC_CLK_TCK") / elapsed
        total = machine_after[0] - machine_before[0]
        if total > 0:
            self.stolen = (machine_after[1] - machine_before[1]) / total


def _parse(output: str) -> Figures:
    match = _FIGURES.search(output)
    if match is None:
        raise RuntimeError(f"no figures in the load generator's output:\n{output}")
    return Figures(float(match[3]), float(match[1]), float(match[2]), int(match[4]))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _prepare_peer() -> Path:
    """A writable copy of the peer with its npm dependencies (shared/ is read-only)."""
    if not (PEER_COPY / "node_modules" / "oidc-provider").is_dir():
        shutil.rmtree(PEER_COPY, ignore_errors=True)
        shutil.copytree(PEER_SOURCE, PEER_COPY)
        for path in [PEER_COPY, *PEER_COPY.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER_COPY, check=True)
    return PEER_COPY


def _fleet_copy(folder: Path) -> Path:
    """The example fleet, plus a copy of the CRM that signs its tokens with ES256."""
    shutil.copytree(ROOT / "policies", folder / "policies")
    fleet = yaml.safe_load((ROOT / "fleet.yaml").read_text())
    crm = fleet["resources"]["crm"]
    fleet["resources"]["crm-es256"] = {
        "kind": "api",
        "identifier": CRM_ES256,
        "signing_algorithm": "ES256",
        "scopes": {"crm:read": crm["scopes"]["crm:read"]},
    }
    for agent in ("sales-assistant", "crm-reconciler"):
        fleet["agents"][agent]["scopes"]["crm-es256"] = ["crm:read"]
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    return path


@contextmanager
def _fleetid(folder: Path) -> Iterator[str]:
    fleet = _fleet_copy(folder)
    port = _free_port()
    server = f"http://127.0.0.1:{port}"
    log = (folder / "serve.log").open("w")
    process = subprocess.Popen(
        [
            str(VENV_BIN / "fleetid"),
            "serve",
            "--fleet",
            str(fleet),
            "--state",
            str(folder / "state"),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_discovery(server)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _secret(folder: Path, agent: str) -> str:
    secrets = json.loads((folder / "state" / "clients.json").read_text())
    return str(secrets[agent])


def _basic(agent: str, secret: str) -> str:
    return base64.b64encode(f"{agent}:{secret}".encode()).decode()


def _wrk(
    url: str,
    request: tuple[str, str] | None,
    seconds: int,
    connections: int,
    *,
    marker: str,
) -> Figures:
    """wrk with the peer's token.lua: `request` is the Basic credentials and the form, or
    None for the script's own (the peer's client). `marker` finds the server's process."""
    script = PEER_COPY / "token.lua"
    environment = dict(os.environ)
    if request is not None:
        environment.update(BENCH_BASIC=request[0], BENCH_BODY=request[1])
    command = ["wrk", "-s", str(script), "-t1", f"-c{connections}", f"-d{seconds}s", url]
    return _measured(command, environment, marker=marker, seconds=seconds)


def _peer(seconds: int, connections: int) -> Figures:
    port = _free_port()
    # bench.sh starts the peer, waits for its discovery document, then runs wrk: the watch
    # begins a little later than the load, which the fifth it skips absorbs.
    command = ["bash", str(PEER_COPY / "bench.sh"), str(seconds), str(connections), str(port)]
    return _measured(command, dict(os.environ), marker=f"server.js {port}", seconds=seconds)


def _measured(
    command: list[str], environment: dict[str, str], *, marker: str, seconds: int
) -> Figures:
    """Run a load that prints token.lua's figures, watching the CPU of the server process
    that `marker` finds."""
    with _CpuWatch(marker, seconds) as cpu:
        done = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    figures = _parse(done.stdout)
    figures.cores = cpu.cores
    figures.stolen = cpu.stolen
    return figures


@dataclass
class SigningRates:
    """Signatures per second on one core, with the library and key sizes the server uses."""

    rs256: float
    es256: float


def _signing_rates(seconds: float = 1.0) -> SigningRates:
    message = b"x" * 400  # about a token's header and claims
    rsa_key = generate_private_key("RS256")
    ec_key = generate_private_key("ES256")

    def rate(key: PrivateKey, algorithm: Algorithm) -> float:
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            sign_with_private_key(key, algorithm, message)
            count += 1
        return count / elapsed

    return SigningRates(rate(rsa_key, "RS256"), rate(ec_key, "ES256"))


# The peer's access-token signing, and where its configuration starts.
_PEER_SIGNING = 'jwt: { sign: { alg: "RS256" } }'
_PEER_CONFIGURATION = "const configuration = {"
_PEER_ES256_KEYS = """
import { generateKeyPairSync } from "node:crypto";
const signingKey = (type, options, alg) => ({
  ...generateKeyPairSync(type, options).privateKey.export({ format: "jwk" }),
  use: "sig",
  alg,
  kid: alg,
});
"""


def _peer_es256() -> Path | None:
    """The peer's server.js, signing access tokens with ES256: an RSA key (for what it
    signs by default) and an EC key in its key set. None when the source has changed."""
    source = (PEER_COPY / "server.js").read_text()
    if source.count(_PEER_SIGNING) != 1 or source.count(_PEER_CONFIGURATION) != 1:
        return None
    keys = (
        "  jwks: { keys: ["
        'signingKey("rsa", { modulusLength: 2048 }, "RS256"), '
        'signingKey("ec", { namedCurve: "P-256" }, "ES256")] },'
    )
    variant = PEER_COPY / "server-es256.js"
    variant.write_text(
        _PEER_ES256_KEYS
        + source.replace(_PEER_SIGNING, 'jwt: { sign: { alg: "ES256" } }').replace(
            _PEER_CONFIGURATION, f"{_PEER_CONFIGURATION}\n{keys}"
        )
    )
    return variant


def _peer_variant(source: Path, seconds: int, connections: int) -> Figures:
    """What bench.sh does, for a rewritten copy of the peer."""
    port = _free_port()
    process = subprocess.Popen(
        ["node", str(source), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_discovery(base)
        _check_peer_signs(f"{base}/token", "ES256")
        return _wrk(f"{base}/token", None, seconds, connections, marker=f"{source.name} {port}")
    finally:
        process.terminate()
        process.wait(timeout=10)


def _check_peer_signs(token_endpoint: str, algorithm: str) -> None:
    """token.lua's own request, once: the variant must answer it with a token signed as
    intended, or its row would say nothing."""
    script = (PEER_COPY / "token.lua").read_text()
    defaults = dict(re.findall(r'os\.getenv\("(BENCH_\w+)"\) or "([^"]*)"', script))
    answer = _check(token_endpoint, defaults["BENCH_BASIC"], defaults["BENCH_BODY"])
    signed_with = jwt.get_unverified_header(str(answer["access_token"])).get("alg")
    if signed_with != algorithm:
        raise RuntimeError(f"the peer variant signed with {signed_with}, not {algorithm}")


def _wait_for_discovery(base: str) -> None:
    for _ in range(100):
        try:
            httpx.get(f"{base}/.well-known/openid-configuration", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)


def _check(token_endpoint: str, basic: str, body: str) -> dict[str, Any]:
    """One request before the load, so that a misconfiguration is an error, not a table of
    failed requests; the token response."""
    response = httpx.post(
        token_endpoint,
        content=body,
        headers={
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    if response.status_code != 200:
        raise RuntimeError(f"{token_endpoint} refused the benchmark request: {response.text}")
    return dict(response.json())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench.server: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    _prepare_peer()

    rows: dict[str, list[Figures]] = {}
    with tempfile.TemporaryDirectory() as temporary, _fleetid(Path(temporary)) as server:
        folder = Path(temporary)
        machine = _basic("crm-reconciler", _secret(folder, "crm-reconciler"))
        assistant_secret = _secret(folder, "sales-assistant")
        assistant = _basic("sales-assistant", assistant_secret)
        signed_in = login(
            server,
            client_id="sales-assistant",
            client_secret=assistant_secret,
            user="alice",
            redirect_uri="https://sales.acme.example.com/oauth/callback",
            scopes=["crm:read"],
        )
        subject = str(signed_in.token["access_token"])
        loads = {
            "fleetid client_credentials RS256": (
                machine,
                urlencode(
                    {"grant_type": "client_credentials", "scope": "crm:read", "resource": CRM}
                ),
            ),
            EXCHANGE_RS256_ROW: (
                assistant,
                urlencode(
                    {
                        "grant_type": EXCHANGE,
                        "subject_token": subject,
                        "subject_token_type": ACCESS_TOKEN,
                        "resource": CRM,
                        "scope": "crm:read",
                    }
                ),
            ),
            "fleetid client_credentials ES256": (
                machine,
                urlencode(
                    {
                        "grant_type": "client_credentials",
                        "scope": "crm:read",
                        "resource": CRM_ES256,
                    }
                ),
            ),
            EXCHANGE_ES256_ROW: (
                assistant,
                urlencode(
                    {
                        "grant_type": EXCHANGE,
                        "subject_token": subject,
                        "subject_token_type": ACCESS_TOKEN,
                        "resource": CRM_ES256,
                        "scope": "crm:read",
                    }
                ),
            ),
        }
        for basic, body in loads.values():
            _check(f"{server}/token", basic, body)
        # Before the loads, on an otherwise idle machine.
        rates = _signing_rates()
        es256_peer = _peer_es256()
        if es256_peer is None:
            print("bench.server: the peer's server.js changed; no ES256 row for it")
        marker = f"--port {server.rsplit(':', 1)[1]}"
        for _ in range(options.rounds):
            rows.setdefault(PEER_ROW, []).append(_peer(options.seconds, options.connections))
            if es256_peer is not None:
                rows.setdefault(PEER_ES256_ROW, []).append(
                    _peer_variant(es256_peer, options.seconds, options.connections)
                )
            for name, request in loads.items():
                rows.setdefault(name, []).append(
                    _wrk(
                        f"{server}/token",
                        request,
                        options.seconds,
                        options.connections,
                        marker=marker,
                    )
                )

    _print(rows, options, rates)
    print(_server_python())
    return 0


def _server_python() -> str:
    """Which interpreter ran fleetid: its build changes what the loop costs (Makefile)."""
    python = VENV_BIN / "python"
    version = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return f"fleetid ran on Python {version}, {os.path.realpath(python)}"


def _print(
    rows: dict[str, list[Figures]], options: argparse.Namespace, rates: SigningRates | None = None
) -> None:
    """Medians over the rounds, then the goal and what bounds it."""
    peer_rps = statistics.median(run.rps for run in rows[PEER_ROW])
    peer_p99 = statistics.median(run.p99 for run in rows[PEER_ROW])
    print(
        f"\ntoken endpoint, wrk -t1 -c{options.connections} -d{options.seconds}s, "
        f"median of {options.rounds} rounds, one server process each"
    )
    print(
        f"{'load':36} {'rps':>7} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'x peer':>7}"
        f" {'cores':>6} {'CPU us/token':>13} {'stolen':>7}"
    )
    for name, runs in rows.items():
        rps = statistics.median(run.rps for run in runs)
        measured = [run for run in runs if run.cores is not None and run.rps]
        cpu = f"{'-':>6} {'-':>13}"
        if measured:
            cores = statistics.median(run.cores or 0.0 for run in measured)
            per_token = statistics.median((run.cores or 0.0) * 1e6 / run.rps for run in measured)
            cpu = f"{cores:6.2f} {per_token:13.0f}"
        stolen_runs = [run.stolen for run in runs if run.stolen is not None]
        stolen = f"{statistics.median(stolen_runs):7.0%}" if stolen_runs else f"{'-':>7}"
        print(
            f"{name:36} {rps:7.0f} {statistics.median(run.p50 for run in runs):8.2f} "
            f"{statistics.median(run.p99 for run in runs):8.2f} "
            f"{sum(run.failures for run in runs):8d} {rps / peer_rps:7.2f} {cpu} {stolen}"
        )
    print("goal: fleetid token exchange >= 1.5x the peer's client_credentials rps, p99 no worse")
    for name in (EXCHANGE_RS256_ROW, EXCHANGE_ES256_ROW):
        if name not in rows:
            continue

        ratio = statistics.median(run.rps for run in rows[name]) / peer_rps
        p99 = statistics.median(run.p99 for run in rows[name])
        met = ratio >= GOAL and p99 <= peer_p99
        print(
            f"  {name}: {ratio:.2f}x, p99 {p99:.2f} ms against {peer_p99:.2f}: "
            f"{'met' if met else 'missed'}"
        )
    if rates is not None:
        goal_rps = GOAL * peer_rps
        print(
            f"one core here signs {rates.rs256:.0f} RS256 or {rates.es256:.0f} ES256 "
            f"signatures/s; at the goal's {goal_rps:.0f} rps, RS256 signatures alone take "
            f"{goal_rps / rates.rs256:.2f} cores of the {len(os.sched_getaffinity(0))} here"
        )
    if PEER_ES256_ROW in rows and EXCHANGE_ES256_ROW in rows:
        exchange = statistics.median(run.rps for run in rows[EXCHANGE_ES256_ROW])
        peer = statistics.median(run.rps for run in rows[PEER_ES256_ROW])
        print(f"ES256 on both sides: fleetid token exchange is {exchange / peer:.2f}x the peer's")


if __name__ == "__main__":
    sys.exit(main())
