"""How the Pulumi program's cost grows with the fleet: synthetic fleets of 10, 100 and 1,000
agents, run under Pulumi's mocks.

    python -m bench.pulumi_program
    python -m bench.pulumi_program --agents 10 100 1000 3000 --runs 3

For each size the synthetic fleet (`bench.synthetic`) is written as real files, then
`__main__.py` runs twice as the engine would run it, with `components.mocks` in the engine's
place:

- up: a first deployment, with no revision deployed before;
- preview: the fleet's 1% mutation against the fleet as deployed, so the run also reads the
  deployed revision and words the policy diff, as `pulumi preview` on a pull request does;
- what if: the first deployment again with the cyclic garbage collector off, a change that is
  not in the program. Python's full collections walk a heap that grows with every resource
  registered, which is the part of the cost that grows faster than the fleet.

What is timed is the program alone: reading and compiling the fleet, building every resource
and registering it with the mock monitor, resolving every output. The engine, the providers
and AWS are not there, so the figures are a floor for a real preview, not a prediction of it.
Every other dimension of the fleet (resources, tenants, rules, gateways) stays fixed, so the
growth is the agents'. The goal: linear, and 1,000 agents in at most 60 s.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.synthetic import CONNECTIONS, FleetSpec, generate, mutate
from components.mocks import Deployment, lambda_archive, run_program
from fleetid.deploy.revision import pack_document, revision_document
from fleetid.fleet.compile import compile_sources
from fleetid.fleet.load import read_sources

__all__ = ["Measurement", "format_table", "main", "measure"]

GOAL_SECONDS_AT_1000 = 60.0
SIZES = (10, 100, 1000)


@dataclass(frozen=True)
class Measurement:
    agents: int
    on_agentcore: int
    resources: int
    custom: int
    up_wall: float
    up_cpu: float
    preview_wall: float
    without_gc_wall: float
    compile_wall: float


def _secrets() -> dict[str, str]:
    """A value for every connection secret the synthetic fleets name in config."""
    secrets: dict[str, str] = {}
    for name, kind, _ in CONNECTIONS:
        reference = f"{name}-api-key" if kind == "api_key" else f"{name}-client-secret"
        secrets[f"fleetid:{reference}"] = f"bench-{reference}"
    return secrets


def _spec(agents: int) -> FleetSpec:
    return FleetSpec(agents=agents, resources=50, tenants=10, roles=100, rules=20, gateways=5)


def measure(agents: int, folder: Path, runs: int = 1) -> Measurement:
    base = generate(_spec(agents))
    base_path = base.write(folder / f"base-{agents}")
    head_path = mutate(base, 0.01).write(folder / f"head-{agents}")
    archive = lambda_archive(folder)
    secrets = _secrets()

    started = time.perf_counter()
    sources = read_sources(base_path)
    revision = compile_sources(sources)
    compile_wall = time.perf_counter() - started
    deployed = {"revisionArchive": pack_document(revision_document(sources, revision.hash))}

    up_walls, up_cpus, preview_walls, without_gc_walls = [], [], [], []
    deployment: Deployment | None = None
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        deployment = run_program(base_path, secrets=secrets, archive=archive)
        up_walls.append(time.perf_counter() - wall)
        up_cpus.append(time.process_time() - cpu)

        wall = time.perf_counter()
        run_program(
            head_path, secrets=secrets, archive=archive, preview=True, deployed_outputs=deployed
        )
        preview_walls.append(time.perf_counter() - wall)

        gc.collect()
        gc.disable()
        try:
            wall = time.perf_counter()
            run_program(base_path, secrets=secrets, archive=archive)
            without_gc_walls.append(time.perf_counter() - wall)
        finally:
            gc.enable()

    assert deployment is not None
    on_agentcore = sum(agent.runtime == "agentcore" for agent in revision.fleet.agents.values())
    return Measurement(
        agents=agents,
        on_agentcore=on_agentcore,
        resources=len(deployment.resources),
        custom=len(deployment.custom),
        up_wall=min(up_walls),
        up_cpu=min(up_cpus),
        preview_wall=min(preview_walls),
        without_gc_wall=min(without_gc_walls),
        compile_wall=compile_wall,
    )


def format_table(measurements: list[Measurement]) -> str:
    lines = [
        "| agents | on AgentCore | resources registered (AWS) | up, s (CPU s) | ms per resource "
        "| preview + diff, s | of which compile, s | what if: GC off, s (ms per resource) |",
        "|" + "---|" * 8,
    ]
    for row in measurements:
        lines.append(
            f"| {row.agents:,} | {row.on_agentcore:,} | {row.resources:,} ({row.custom:,}) "
            f"| {row.up_wall:.2f} ({row.up_cpu:.2f}) | {1000 * row.up_wall / row.resources:.2f} "
            f"| {row.preview_wall:.2f} | {row.compile_wall:.2f} "
            f"| {row.without_gc_wall:.2f} ({1000 * row.without_gc_wall / row.resources:.2f}) |"
        )

    lines.append("")
    for smaller, larger in itertools.pairwise(measurements):
        resources = larger.resources / smaller.resources
        lines.append(
            f"{smaller.agents:,} to {larger.agents:,} agents: {resources:.1f} times the "
            f"resources, {larger.up_wall / smaller.up_wall:.1f} times the time "
            f"({larger.without_gc_wall / smaller.without_gc_wall:.1f} with GC off)."
        )

    at_1000 = [row for row in measurements if row.agents == 1000]
    if at_1000:
        worst = max(at_1000[0].up_wall, at_1000[0].preview_wall)
        verdict = "meets" if worst <= GOAL_SECONDS_AT_1000 else "misses"
        lines.append(
            f"1,000 agents: {worst:.1f} s at worst, which {verdict} the goal of "
            f"{GOAL_SECONDS_AT_1000:.0f} s."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--runs", type=int, default=1, help="runs per size; the best is shown")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fleetid-bench-pulumi-") as scratch:
        # The first run imports pulumi_aws's modules; no size should pay for that.
        measure(min(args.agents), Path(scratch) / "warm-up")
        measurements = []
        for agents in sorted(args.agents):
            measurements.append(measure(agents, Path(scratch), args.runs))
            print(f"  {agents:,} agents measured", file=sys.stderr)

    print(format_table(measurements))
    return 0


if __name__ == "__main__":
    sys.exit(main())
