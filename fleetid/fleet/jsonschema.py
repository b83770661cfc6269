"""The JSON Schemas (draft 2020-12) of fleet.yaml and of policy files.

They are generated from the models in `fleetid.fleet.model` and shipped as files in
`fleetid/fleet/schema/`, for editors (`# yaml-language-server: $schema=...`) and for
anything outside fleetid that wants to check a fleet. `fleetid schema --write` refreshes
the files; a test fails when they are stale.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel

from fleetid.fleet.model import Fleet, PolicyFile

__all__ = ["SCHEMA_FILES", "generate", "rendered", "shipped"]

Kind = Literal["fleet", "policy"]
DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILES: dict[Kind, str] = {"fleet": "fleet.schema.json", "policy": "policy.schema.json"}
_MODELS: dict[Kind, type[BaseModel]] = {"fleet": Fleet, "policy": PolicyFile}


def _close_pattern_maps(node: Any) -> None:
    """Pydantic renders a mapping with pattern-constrained keys as `patternProperties`,
    which lets any other key through unchecked; say instead that every key must match."""
    if isinstance(node, dict):
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and len(patterns) == 1:
            ((pattern, value),) = patterns.items()
            del node["patternProperties"]
            node["additionalProperties"] = value
            node.setdefault("propertyNames", {})["pattern"] = pattern
        for child in node.values():
            _close_pattern_maps(child)
    elif isinstance(node, list):
        for child in node:
            _close_pattern_maps(child)


def generate(kind: Kind) -> dict[str, Any]:
    schema = _MODELS[kind].model_json_schema(mode="validation")
    _close_pattern_maps(schema)
    return {"$schema": DIALECT, **schema}


def rendered(kind: Kind) -> str:
    return json.dumps(generate(kind), indent=2, sort_keys=True) + "\n"


def shipped(kind: Kind) -> str:
    """The schema file as installed with the package."""
    return resources.files("fleetid.fleet").joinpath("schema", SCHEMA_FILES[kind]).read_text()
