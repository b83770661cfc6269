"""The public API of `fleetid.vault` is what its `__all__` says."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import fleetid.vault


def test_all_names_exist() -> None:
    for name in fleetid.vault.__all__:
        assert hasattr(fleetid.vault, name), name


def test_every_public_name_of_a_module_is_exported() -> None:
    exported = set(fleetid.vault.__all__)
    for module_info in pkgutil.iter_modules(fleetid.vault.__path__):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"fleetid.vault.{module_info.name}")
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if inspect.isclass(value):
                assert name in exported, f"{module_info.name}.{name}"
