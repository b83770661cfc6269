"""Running the `fleetid` command in-process, as tests of the command line do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetid import cli


@dataclass(frozen=True)
class Run:
    """What one command printed, and its exit code."""

    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


def runner(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """A function that runs `fleetid ARGS...` and returns what it printed.

    Every run is also held to the command line's promise: no traceback, and no "please
    report it" for anything a user can cause.
    """

    def invoke(*args: str | Path) -> Run:
        code = 0
        try:
            cli.main([str(arg) for arg in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        assert "Traceback" not in captured.out + captured.err
        assert "please report it" not in captured.err
        return Run(code, captured.out, captured.err)

    return invoke
