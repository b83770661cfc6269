"""The Lambda deployment archive, built so that the same inputs give the same bytes.

    python -m fleetid.deploy.package --arch x86_64 --out build/lambda.zip

Steps:

1. build fleetid's wheel from a clean copy of the source (pyproject.toml, README.md and
   fleetid/), so that nothing left in the working tree's own build folders can slip in;
2. ``pip install`` that wheel and its runtime dependencies into a folder, for the Lambda
   platform rather than this machine: ``--platform manylinux2014_<arch>`` (and
   ``manylinux_2_28_<arch>``, which Amazon Linux 2023 runs), ``--python-version 3.12``,
   ``--only-binary=:all:``, so no dependency is compiled here;
3. drop what differs from one build to the next or is useless on Lambda: console scripts
   (their first line names this machine's interpreter), ``direct_url.json`` (the path of the
   wheel), ``__pycache__`` from the build itself;
4. when this interpreter is the target version, compile bytecode with unchecked hashes and
   ``PYTHONHASHSEED=0``: no timestamp, no path of this machine (``/var/task`` is where
   Lambda unpacks), no set constant ordered by a random seed. Lambda's file system is read
   only, so without it every cold start compiles every module it imports;
5. write ``fleetid-lambda.json`` (architecture, Python version, handler) and zip the folder
   with entries sorted by path, every timestamp 1980-01-01 and modes reduced to 0644/0755.

Byte-identical rebuilds also need the same dependency versions: pass ``--constraint`` with a
pinned constraints file, otherwise pip takes the newest versions PyPI has that day. The build
itself needs PyPI; only the zip step (`zip_tree`) runs without a network.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

__all__ = [
    "ARCHITECTURES",
    "HANDLER",
    "MANIFEST",
    "build_archive",
    "install_command",
    "main",
    "read_manifest",
    "zip_tree",
]

HANDLER: Final = "fleetid.deploy.handler.handler"
MANIFEST: Final = "fleetid-lambda.json"
LAMBDA_ROOT: Final = "/var/task"
PYTHON_VERSION: Final = "3.12"

# Lambda's architecture names, and the wheel platforms each one runs.
ARCHITECTURES: Final = {
    "x86_64": ("manylinux2014_x86_64", "manylinux_2_28_x86_64"),
    "arm64": ("manylinux2014_aarch64", "manylinux_2_28_aarch64"),
}

# 1980-01-01, the earliest time a zip entry can hold.
_EPOCH: Final = (1980, 1, 1, 0, 0, 0)
# Not setup.py: it only adds the native RS256 signing threads of `fleetid serve`, and leaving
# it out keeps the wheel pure Python, installable for Lambda's platform from this machine.
_SOURCE_FILES: Final = ("pyproject.toml", "README.md", "LICENSE")
_PIP: Final = (sys.executable, "-m", "pip")
_COMPILEALL: Final = (sys.executable, "-m", "compileall", "-q", "-j", "1")


def install_command(
    wheel: Path,
    target: Path,
    *,
    architecture: str,
    python_version: str = PYTHON_VERSION,
    constraint: Path | None = None,
) -> list[str]:
    """The pip command that installs `wheel` and its dependencies for Lambda into `target`."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}")

    command = [*_PIP, "install", "--quiet", "--no-compile"]
    command += ["--target", str(target), "--only-binary=:all:", "--implementation", "cp"]
    command += ["--python-version", python_version]
    for platform in ARCHITECTURES[architecture]:
        command += ["--platform", platform]
    if constraint is not None:
        command += ["--constraint", str(constraint)]

    return [*command, str(wheel)]


def zip_tree(folder: Path, out: Path) -> Path:
    """Zip every file under `folder`: sorted entries, fixed times, normalised modes."""
    files = sorted(
        (path for path in folder.rglob("*") if path.is_file()),
        key=lambda path: path.relative_to(folder).as_posix(),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")

    with zipfile.ZipFile(temporary, "w") as archive:
        for path in files:
            entry = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=_EPOCH)
            entry.create_system = 3
            executable = path.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            entry.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, path.read_bytes(), compresslevel=9)

    os.replace(temporary, out)

    return out


def read_manifest(archive: Path) -> dict[str, str]:
    """The manifest of an archive built here: its architecture, Python version, handler."""
    with zipfile.ZipFile(archive) as opened:
        manifest = json.loads(opened.read(MANIFEST))

    if not isinstance(manifest, dict):
        raise ValueError(f"{archive}: {MANIFEST} is not a JSON object")

    return {str(key): str(value) for key, value in manifest.items()}


def build_archive(
    out: Path,
    *,
    architecture: str,
    source: Path,
    constraint: Path | None = None,
    bytecode: bool = True,
) -> Path:
    """Build the deployment archive at `out` from the project at `source`."""
    with tempfile.TemporaryDirectory(prefix="fleetid-lambda-") as scratch:
        work = Path(scratch)
        tree = _copy_source(source, work / "source")
        wheels = work / "wheels"
        _run(
            [*_PIP, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(tree)],
            what="building fleetid's wheel",
        )
        (wheel,) = wheels.glob("fleetid-*.whl")

        site = work / "site"
        _run(
            install_command(wheel, site, architecture=architecture, constraint=constraint),
            what="installing the runtime dependencies for Lambda",
        )
        _strip(site)
        if bytecode:
            _compile(site)

        manifest = {"architecture": architecture, "handler": HANDLER, "python": PYTHON_VERSION}
        (site / MANIFEST).write_text(json.dumps(manifest, sort_keys=True) + "\n")

        return zip_tree(site, out)


def _copy_source(source: Path, tree: Path) -> Path:
    tree.mkdir(parents=True)
    for name in _SOURCE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, tree / name)
    shutil.copytree(
        source / "fleetid", tree / "fleetid", ignore=shutil.ignore_patterns("__pycache__")
    )

    return tree


def _strip(site: Path) -> None:
    shutil.rmtree(site / "bin", ignore_errors=True)
    for cache in sorted(site.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    for direct_url in site.glob("*.dist-info/direct_url.json"):
        direct_url.unlink()

    # Each RECORD lists its files with their hashes; the removed ones (a script naming this
    # machine's interpreter, the wheel's temporary path) would carry their differences on.
    for record in site.glob("*.dist-info/RECORD"):
        with record.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        kept = [row for row in rows if row and _installed(site, row[0])]
        with record.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, lineterminator="\n").writerows(kept)


def _installed(site: Path, listed: str) -> bool:
    path = (site / listed).resolve()

    return path.is_relative_to(site.resolve()) and path.is_file()


def _compile(site: Path) -> None:
    # A .pyc holds the bytecode of one Python version: only an interpreter of the target
    # version can write ones Lambda will use.
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON_VERSION:
        print(
            f"note: bytecode not compiled (this is Python {sys.version_info.major}."
            f"{sys.version_info.minor}, Lambda runs {PYTHON_VERSION}); cold starts compile it",
            file=sys.stderr,
        )
        return

    _run(
        [*_COMPILEALL, "-d", LAMBDA_ROOT, "--invalidation-mode", "unchecked-hash", str(site)],
        what="compiling bytecode",
        environment={**os.environ, "PYTHONHASHSEED": "0"},
    )


def _run(command: Sequence[str], *, what: str, environment: dict[str, str] | None = None) -> None:
    done = subprocess.run(command, check=False, env=environment)  # noqa: S603 - no shell
    if done.returncode != 0:
        raise SystemExit(f"{what} failed (exit status {done.returncode})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fleetid.deploy.package",
        description="Build the identity server's Lambda archive, reproducibly.",
    )
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="x86_64")
    parser.add_argument("--out", type=Path, default=Path("build/lambda.zip"))
    parser.add_argument("--source", type=Path, default=Path("."), help="the project folder")
    parser.add_argument(
        "--constraint", type=Path, default=None, help="pinned versions, for identical rebuilds"
    )
    parser.add_argument(
        "--no-bytecode", action="store_true", help="ship sources only, no .pyc files"
    )
    args = parser.parse_args(argv)

    out = build_archive(
        args.out,
        architecture=args.arch,
        source=args.source,
        constraint=args.constraint,
        bytecode=not args.no_bytecode,
    )
    size = out.stat().st_size
    print(f"{out}: {size / 1_000_000:.1f} MB for {args.arch}, Python {PYTHON_VERSION}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
