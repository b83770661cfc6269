"""The deployment archive: same inputs, same bytes. Only the zip step runs here; the full
build installs from PyPI and is exercised by `python -m fleetid.deploy.package`."""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import pytest

from fleetid.deploy import package


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


FILES = {
    "fleetid/__init__.py": "VERSION = 1\n",
    "fleetid/deploy/handler.py": "def handler(event, context):\n    return {}\n",
    "yaml/_yaml.so": "binary\n",
    package.MANIFEST: '{"architecture": "arm64", "handler": "h", "python": "3.12"}\n',
}


def test_zipping_the_same_folder_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    first = tree(tmp_path / "first", FILES)
    # The same files, written in another order, at other times, with another umask.
    second = tree(tmp_path / "second", dict(reversed(list(FILES.items()))))
    for offset, path in enumerate(sorted(second.rglob("*"))):
        os.utime(path, (1_000_000 + offset, 1_000_000 + offset))
        if path.is_file():
            path.chmod(0o664)
    (second / "yaml/_yaml.so").chmod(0o775)
    (first / "yaml/_yaml.so").chmod(0o755)

    one = package.zip_tree(first, tmp_path / "one.zip")
    two = package.zip_tree(second, tmp_path / "two.zip")

    assert one.read_bytes() == two.read_bytes()


def test_entries_are_sorted_with_fixed_times_and_modes(tmp_path: Path) -> None:
    folder = tree(tmp_path / "site", FILES)
    (folder / "yaml/_yaml.so").chmod(0o755)

    with zipfile.ZipFile(package.zip_tree(folder, tmp_path / "out.zip")) as archive:
        entries = archive.infolist()

    assert [entry.filename for entry in entries] == sorted(FILES)
    assert {entry.date_time for entry in entries} == {(1980, 1, 1, 0, 0, 0)}
    modes = {entry.filename: (entry.external_attr >> 16) & 0o777 for entry in entries}
    assert modes["yaml/_yaml.so"] == 0o755
    assert modes["fleetid/__init__.py"] == 0o644


def test_the_manifest_names_the_architecture(tmp_path: Path) -> None:
    archive = package.zip_tree(tree(tmp_path / "site", FILES), tmp_path / "lambda.zip")

    assert package.read_manifest(archive)["architecture"] == "arm64"


@pytest.mark.parametrize(
    ("architecture", "platform"),
    [("x86_64", "manylinux2014_x86_64"), ("arm64", "manylinux2014_aarch64")],
)
def test_dependencies_are_installed_for_lambda_not_for_this_machine(
    architecture: str, platform: str, tmp_path: Path
) -> None:
    command = package.install_command(
        tmp_path / "fleetid-0.1.0-py3-none-any.whl",
        tmp_path / "site",
        architecture=architecture,
        constraint=tmp_path / "constraints.txt",
    )

    assert command[:4] == [sys.executable, "-m", "pip", "install"]
    assert "--only-binary=:all:" in command
    assert command[command.index("--python-version") + 1] == "3.12"
    assert platform in command
    assert command[command.index("--constraint") + 1].endswith("constraints.txt")
    assert "--no-compile" in command, "bytecode is compiled separately, reproducibly"


def test_an_unknown_architecture_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="x86_64, arm64"):
        package.install_command(tmp_path / "w.whl", tmp_path, architecture="ppc64le")


def test_what_differs_between_builds_is_stripped(tmp_path: Path) -> None:
    site = tree(
        tmp_path / "site",
        {
            "bin/fleetid": "#!/home/builder/.venv/bin/python\n",
            "fleetid/__pycache__/x.cpython-312.pyc": "cache",
            "fleetid/__init__.py": "",
            "fleetid-0.1.0.dist-info/direct_url.json": '{"url": "file:///tmp/xyz"}',
            "fleetid-0.1.0.dist-info/RECORD": (
                "fleetid/__init__.py,sha256=abc,0\n"
                "fleetid-0.1.0.dist-info/direct_url.json,sha256=def,26\n"
                "../../bin/fleetid,sha256=ghi,34\n"
                "fleetid-0.1.0.dist-info/RECORD,,\n"
            ),
        },
    )

    package._strip(site)

    assert sorted(
        path.relative_to(site).as_posix() for path in site.rglob("*") if path.is_file()
    ) == [
        "fleetid-0.1.0.dist-info/RECORD",
        "fleetid/__init__.py",
    ]
    assert (site / "fleetid-0.1.0.dist-info/RECORD").read_text() == (
        "fleetid/__init__.py,sha256=abc,0\nfleetid-0.1.0.dist-info/RECORD,,\n"
    )
