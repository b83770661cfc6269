"""The Pulumi program benchmark still runs, on a fleet small enough for the test suite.
No duration is asserted."""

from __future__ import annotations

from pathlib import Path

from bench.pulumi_program import format_table, measure


def test_the_benchmark_measures_and_prints_a_table(tmp_path: Path) -> None:
    measurements = [measure(agents, tmp_path / str(agents)) for agents in (4, 8)]

    assert measurements[1].resources > measurements[0].resources
    table = format_table(measurements)
    assert table.startswith("| agents |")
    assert "4 to 8 agents" in table
