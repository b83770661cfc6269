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
microseconds per token. The peer signs on Node's thread pool and can use more than one core;
one fleetid process runs Python on one.
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
from urllib.parse import urlencode

import httpx
import yaml

from fleetid.login import login

ROOT = Path(__file__).resolve().parent.parent
PEER_SOURCE = ROOT.parent / "shared" / "peers" / "oidc-provider"
PEER_COPY = ROOT / "bench" / "out" / "oidc-provider"
CRM = "https://crm.acme.example.com"
CRM_ES256 = "https://crm-es256.acme.example.com"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
_FIGURES = re.compile(r"p50_ms=([\d.]+) p99_ms=([\d.]+) rps=(\d+) non2xx=(\d+)")


@dataclass
class Figures:
    rps: float
    p50: float
    p99: float
    failures: int
    cores: float | None = None


class _CpuWatch:
    """The cores used by the processes whose command line contains `marker`, measured
    from a fifth to four fifths of a load that lasts `seconds`: start-up and the last
    connections are left out."""

    def __init__(self, marker: str, seconds: int) -> None:
        self.marker = marker
        self.seconds = seconds
        self.cores: float | None = None
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

    def _watch(self) -> None:
        if not Path("/proc/self/stat").exists():
            return
        time.sleep(self.seconds * 0.2)
        before, started = self._ticks(), time.monotonic()
        time.sleep(self.seconds * 0.6)
        after, elapsed = self._ticks(), time.monotonic() - started
        used = sum(after[pid] - before[pid] for pid in after.keys() & before.keys())
        if before:
            self.cores = used / os.sysconf("SC_CLK_TCK") / elapsed


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
            str(ROOT / ".venv" / "bin" / "fleetid"),
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
        for _ in range(100):
            try:
                httpx.get(f"{server}/.well-known/openid-configuration", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
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


def _wrk(url: str, basic: str, body: str, seconds: int, connections: int) -> Figures:
    script = PEER_COPY / "token.lua"
    environment = {**os.environ, "BENCH_BASIC": basic, "BENCH_BODY": body}
    port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
    with _CpuWatch(f"--port {port}", seconds) as cpu:
        done = subprocess.run(
            ["wrk", "-s", str(script), "-t1", f"-c{connections}", f"-d{seconds}s", url],
            env=environment,
            capture_output=True,
            text=True,
            check=True,
        )
    figures = _parse(done.stdout)
    figures.cores = cpu.cores
    return figures


def _peer(seconds: int, connections: int) -> Figures:
    port = _free_port()
    # bench.sh starts the peer, waits for its discovery document, then runs wrk: the watch
    # begins a little later than the load, which the fifth it skips absorbs.
    with _CpuWatch(f"server.js {port}", seconds) as cpu:
        done = subprocess.run(
            ["bash", str(PEER_COPY / "bench.sh"), str(seconds), str(connections), str(port)],
            capture_output=True,
            text=True,
            check=True,
        )
    figures = _parse(done.stdout)
    figures.cores = cpu.cores
    return figures


def _check(server: str, basic: str, body: str) -> None:
    """One request before the load, so that a misconfiguration is an error, not a table of
    failed requests."""
    response = httpx.post(
        f"{server}/token",
        content=body,
        headers={
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    if response.status_code != 200:
        raise RuntimeError(f"fleetid refused the benchmark request: {response.text}")


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
        subject = str(signed_in["access_token"])
        loads = {
            "fleetid client_credentials RS256": (
                machine,
                urlencode(
                    {"grant_type": "client_credentials", "scope": "crm:read", "resource": CRM}
                ),
            ),
            "fleetid token exchange RS256": (
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
            "fleetid token exchange ES256": (
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
            _check(server, basic, body)
        for _ in range(options.rounds):
            rows.setdefault("peer client_credentials RS256", []).append(
                _peer(options.seconds, options.connections)
            )
            for name, (basic, body) in loads.items():
                rows.setdefault(name, []).append(
                    _wrk(f"{server}/token", basic, body, options.seconds, options.connections)
                )

    _print(rows, options)
    return 0


def _print(rows: dict[str, list[Figures]], options: argparse.Namespace) -> None:
    """Medians over the rounds."""
    peer_rps = statistics.median(run.rps for run in rows["peer client_credentials RS256"])
    print(
        f"\ntoken endpoint, wrk -t1 -c{options.connections} -d{options.seconds}s, "
        f"median of {options.rounds} rounds, one server process each"
    )
    print(
        f"{'load':36} {'rps':>7} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'x peer':>7}"
        f" {'cores':>6} {'CPU us/token':>13}"
    )
    for name, runs in rows.items():
        rps = statistics.median(run.rps for run in runs)
        measured = [run for run in runs if run.cores is not None and run.rps]
        cpu = f"{'-':>6} {'-':>13}"
        if measured:
            cores = statistics.median(run.cores or 0.0 for run in measured)
            per_token = statistics.median((run.cores or 0.0) * 1e6 / run.rps for run in measured)
            cpu = f"{cores:6.2f} {per_token:13.0f}"
        print(
            f"{name:36} {rps:7.0f} {statistics.median(run.p50 for run in runs):8.2f} "
            f"{statistics.median(run.p99 for run in runs):8.2f} "
            f"{sum(run.failures for run in runs):8d} {rps / peer_rps:7.2f} {cpu}"
        )
    print("goal: fleetid token exchange >= 1.5x the peer's client_credentials rps, p99 no worse")


if __name__ == "__main__":
    sys.exit(main())
