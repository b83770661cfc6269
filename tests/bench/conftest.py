"""The benchmarks are the `bench` package at the repository's root, which is not installed:
put the root on the import path, as `python -m bench.fleet` run from it does."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
