"""Config validation: errors name the key, the value and what was expected."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from brainpipe.config import validate_config
from brainpipe.errors import BrainpipeInputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_default_config_is_valid(config):
    validate_config(config)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("synthetic", "seed"), "abc", "field 'synthetic.seed': expected integer, got 'abc' (str)"),
        (("tr",), "fast", "field 'tr': expected number, got 'fast' (str)"),
        (("subjects",), "01", "field 'subjects': expected array, got '01' (str)"),
        (("features", "n_components"), 0, "field 'features.n_components'"),
        (("models",), ["transformer"], "field 'models.0'"),
    ],
)
def test_wrong_type_names_the_key(config, path, value, message):
    bad = copy.deepcopy(config)
    target = bad
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(BrainpipeInputError) as err:
        validate_config(bad, source="my.yaml")
    assert str(err.value).startswith("my.yaml: ")
    assert message in str(err.value)


def test_unknown_key_is_named(config):
    config["ridge"]["alpha"] = 3
    with pytest.raises(BrainpipeInputError, match="field 'ridge': unknown key.*'alpha'"):
        validate_config(config)


def test_model_names_are_checked_against_the_registry(config):
    """No enum in the schema: a registered model is valid, an unknown one is named."""
    from brainpipe.models import MODELS

    config["models"] = sorted(MODELS)
    validate_config(config)
    config["models"] = ["ridge", "nosuchmodel"]
    with pytest.raises(BrainpipeInputError) as err:
        validate_config(config)
    assert "models.1" in str(err.value) and "'nosuchmodel'" in str(err.value)
    assert "ridgedecoder" in str(err.value)  # the registered names are listed


def test_snakemake_stops_on_a_bad_config_before_any_job(tmp_path):
    # A real Snakemake parse: the error names the key and nothing is run.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(ROOT),
            "--config",
            "tr=fast",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "field 'tr': expected number, got 'fast' (str)" in result.stdout + result.stderr


def test_source_workers_has_one_home(config):
    """Parallel transfers (``source.workers``): the schema's default is the one home. The
    workflow's config gets it from Snakemake's validate (the ``fetch`` and ``ingest_betas``
    jobs' threads), package functions called without a config through
    ``brainpipe.remote.WORKERS``; no registry entry repeats it."""
    import inspect

    from snakemake.utils import validate

    from brainpipe.config import SCHEMA_PATH, schema_default
    from brainpipe.datasets.nsd_captions import fetch_caption_files
    from brainpipe.datasets.nsd_layout import NsdOptions
    from brainpipe.remote import WORKERS, fetch_objects

    default = schema_default("source.workers")
    assert isinstance(default, int) and default >= 1
    assert WORKERS == default and NsdOptions().workers == default
    for func in (fetch_caption_files, fetch_objects):
        assert inspect.signature(func).parameters["workers"].default == default
    config.pop("source", None)
    validate(config, str(SCHEMA_PATH), set_default=True)
    assert config["source"]["workers"] == default
    for path in sorted((ROOT / "config" / "datasets").glob("*.yaml")):
        assert "workers" not in (yaml.safe_load(path.read_text()).get("source") or {}), path
    rules = (ROOT / "rules" / "ingest.smk").read_text()
    assert rules.count('threads: config["source"]["workers"]') == 2  # fetch, ingest_betas
