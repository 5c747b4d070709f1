"""Config validation against the JSON schema, with errors that name the key."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from brainpipe.errors import BrainpipeInputError

#: The schema shipped with the workflow.
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schemas" / "config.schema.yaml"


#: libyaml's loader where PyYAML was built with it (parses the schema ~10x faster than
#: the pure-Python one: every job that imports brainpipe reads the schema's defaults).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=8)
def _parsed_schema(path: str, mtime_ns: int) -> dict[str, Any]:
    with open(path) as fh:
        return yaml.load(fh, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Read the config JSON schema (written as YAML); a fresh copy each call."""
    return copy.deepcopy(_schema(path))


def _schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The parsed schema, shared (parsed once per file version): not to be modified."""
    path = Path(path)
    return _parsed_schema(str(path), path.stat().st_mtime_ns)


def schema_default(key: str, schema: Mapping[str, Any] | None = None) -> Any:
    """The schema's ``default`` of a dotted config key (e.g. ``"betas.voxel_chunk"``).

    The schema is the one home of every default: Snakemake applies them to the config
    (``snakemake.utils.validate`` in ``rules/common.smk``), and package functions called
    without a config take theirs from here.

    Raises
    ------
    KeyError
        When the key has no default in the schema.
    """
    node: Any = _schema() if schema is None else schema
    for part in key.split("."):
        node = (node.get("properties") or {}).get(part)
        if node is None:
            raise KeyError(f"{key}: not a key of the config schema")
    if "default" not in node:
        raise KeyError(f"{key}: the config schema gives no default")
    return copy.deepcopy(node["default"])  # the parsed schema is shared


#: Voxels per storage chunk and compute block (``betas.voxel_chunk``; from the schema).
VOXEL_CHUNK: int = schema_default("betas.voxel_chunk")


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    value = error.instance
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"expected {expected}, got {shown} ({type(value).__name__})"
    if error.validator == "additionalProperties":
        return f"unknown key(s): {error.message.split('(')[-1].rstrip(')')}"
    if error.validator == "required":
        return error.message
    return f"{error.message} (got {shown})"


def validate_config(
    config: Mapping[str, Any], schema: Mapping[str, Any] | None = None, source: str = "config"
) -> None:
    """Validate ``config`` against the schema.

    Parameters
    ----------
    config : mapping
        The workflow configuration.
    schema : mapping, optional
        The JSON schema; defaults to ``config/schemas/config.schema.yaml``.
    source : str
        How to name the config in messages (its file, usually).

    Raises
    ------
    BrainpipeInputError
        For the first problem found (deepest path first), naming the key, the
        value received and what was expected.
    """
    schema = _schema() if schema is None else schema
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(dict(config)), key=lambda e: (-len(e.path), str(e.path)))
    if errors:
        err = errors[0]
        raise BrainpipeInputError(source, _key_path(err), _describe(err))
    _check_registered(config, source)


def _check_registered(config: Mapping[str, Any], source: str) -> None:
    """Names that must be registry entries: feature models (or configured networks), models,
    the decoders of ``align.decoding_models``.

    The registries are the one list of what exists (the schema checks only the spelling),
    so adding a model or a feature model needs no schema edit.
    """
    from brainpipe.features import FEATURE_MODELS
    from brainpipe.models import MODELS

    networks = (config.get("features") or {}).get("networks") or {}
    if networks:
        from brainpipe.features.weights import network_settings

        network_settings(config.get("features"))  # unknown network or layer stops here
    for n, name in enumerate(config.get("feature_models", [])):
        if name not in FEATURE_MODELS and name not in networks:
            raise BrainpipeInputError(
                source,
                f"feature_models.{n}",
                f"unknown feature model {name!r} (registered: {sorted(FEATURE_MODELS)}; "
                f"configured networks (features.networks): {sorted(networks)})",
            )
    for n, name in enumerate(config.get("models", [])):
        if name not in MODELS:
            raise BrainpipeInputError(
                source, f"models.{n}", f"unknown model {name!r} (registered: {sorted(MODELS)})"
            )
    from brainpipe.align.decoding import check_decoding_models

    check_decoding_models(config, source)  # align.decoding_models: one-subject decoders


def result_locations(config: Mapping[str, Any]) -> dict[str, str]:
    """Where the summary, the report and the stores of a config's run are."""
    results = f"{config['results_dir']}/{config['dataset']}"
    return {
        "summary": f"{results}/summary.tsv",
        "report": f"{results}/report.html",
        "stores": f"{results}/sub-*/betas.zarr, {results}/features/*.zarr, {results}/models/",
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Validate a config; print where its results go.")
    parser.add_argument("config", type=Path)
    parser.add_argument("--where", action="store_true", help="print result locations")
    args = parser.parse_args()
    with open(args.config) as fh:
        cfg = yaml.safe_load(fh)
    validate_config(cfg, source=str(args.config))
    if args.where:
        for name, location in result_locations(cfg).items():
            print(f"{name:>8}: {location}")
