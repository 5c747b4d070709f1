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
