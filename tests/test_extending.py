"""The how-tos of docs/howto/, done for real: each test copies the repository, makes exactly
the change its how-to describes (nothing else), and runs the copy with Snakemake.

One base copy (module fixture) runs the shared part once — a tiny local BIDS dataset
through betas, splits and the gabor features; each test copies that base (results
included) and adds its model, feature network, dataset or rule.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from brainpipe.storage import open_zarr

from .conftest import ROOT

pytestmark = pytest.mark.integration

#: What a copy of the repository needs to run (tracked files under these).
COPIED = ("Snakefile", "rules", "workflow", "config", "profiles", "envs")


def tiny_config() -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(
        subjects=["01"],
        sessions=["01", "02"],
        runs=["01", "02"],
        rois=["V1"],
        feature_models=["gabor"],
        models=["ridge"],
        model_params={},
    )
    config["betas"] = {"method": "lsa"}
    config["align"] = {"methods": []}
    config["ridge"]["alphas"] = [1, 100, 10000]
    config["synthetic"].update(
        seed=3, n_subjects=1, n_sessions=2, n_runs=2, trials_per_run=24, voxel_size_mm=8.0,
        n_shared=8,
    )  # fmt: skip
    return config


def copy_repo(dest: Path) -> Path:
    """The tracked files a run needs, copied to ``dest``."""
    files = subprocess.run(
        ["git", "ls-files", *COPIED], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


def run(repo: Path, config: dict, *targets: str) -> subprocess.CompletedProcess:
    """Snakemake in the copy, with the copy's package first on the path."""
    (repo / "test-config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(repo / "workflow")}
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", "2",
           "--configfile", "test-config.yaml", "--rerun-triggers", "mtime"]  # fmt: skip
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A repository copy that has run download, betas, splits and gabor features."""
    repo = copy_repo(tmp_path_factory.mktemp("base") / "repo")
    run(
        repo,
        tiny_config(),
        "results/synthetic/sub-01/betas.zarr",
        "results/synthetic/features/gabor.zarr",
    )
    return repo


@pytest.fixture
def repo(base, tmp_path) -> Path:
    """A private copy of the base run, to extend."""
    return Path(shutil.copytree(base, tmp_path / "repo", symlinks=True))


def add_import(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path}: the how-to's anchor {old!r} is gone; update docs/howto"
    path.write_text(text.replace(old, new))


# --- docs/howto/add-a-model.md ----------------------------------------------------------

NEAREST_MODEL = '''
"""Nearest training stimulus in feature space: predicts its mean response."""

import numpy as np

from brainpipe.models.data import JobData
from brainpipe.models.registry import FitResult, register_model


@register_model("nearest", kind="encoding", defaults={"k": 5})
def nearest(data: JobData, params: dict) -> FitResult:
    train, test = data.features_train[0], data.features_test[0]
    dist = ((test[:, None, :] - train[None, :, :]) ** 2).sum(axis=2)
    nearest_rows = np.argsort(dist, axis=1)[:, : params["k"]]
    predicted = data.betas_train[nearest_rows].mean(axis=1)
    return FitResult(weights={"train_features": train}, predicted=predicted)
'''


def test_add_a_model(repo):
    (repo / "workflow/brainpipe/models/nearest.py").write_text(NEAREST_MODEL)
    add_import(
        repo / "workflow/brainpipe/models/__init__.py",
        "from brainpipe.models import decoders, encoders",
        "from brainpipe.models import decoders, encoders, nearest",
    )
    config = tiny_config()
    config["models"] = ["ridge", "nearest"]
    config["model_params"] = {"nearest": {"k": 3}}
    job = "results/synthetic/models/sub-01/V1/nearest-gabor"
    run(repo, config, f"{job}/metrics.json")
    metrics = json.loads((repo / job / "metrics.json").read_text())
    assert metrics["model"] == "nearest" and metrics["kind"] == "encoding"
    assert np.isfinite(metrics["mean_r"])
    predicted = open_zarr(repo / job / "predictions.zarr")["predicted"]
    assert predicted.sizes["voxel"] == metrics["n_voxels"]


# --- docs/howto/add-a-feature-network.md -------------------------------------------------

TINY_CNN = '''
"""A small convolutional network as a feature model (random weights, fixed seed)."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainpipe.features import register_feature_model
from brainpipe.features.gabor import load_grayscale_images


@register_feature_model("tinycnn", required_columns=("image",))
def tinycnn(stimuli: pd.DataFrame, stimuli_dir: Path, train_mask: np.ndarray) -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 5, stride=2), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 96, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        images = load_grayscale_images([Path(stimuli_dir) / str(p) for p in stimuli["image"]])
        x = torch.as_tensor(np.asarray(images, np.float32))[:, None]
        return net(x).numpy().astype(np.float32)
'''


def test_add_a_feature_network(repo):
    (repo / "workflow/brainpipe/features/tinycnn.py").write_text(TINY_CNN)
    add_import(
        repo / "workflow/brainpipe/features/__init__.py",
        "from brainpipe.features import caption, gabor",
        "from brainpipe.features import caption, gabor, tinycnn",
    )
    config = tiny_config()
    config["feature_models"] = ["gabor", "tinycnn"]
    job = "results/synthetic/models/sub-01/V1/ridge-tinycnn"
    run(repo, config, f"{job}/metrics.json")
    store = open_zarr(repo / "results/synthetic/features/tinycnn.zarr")
    assert store.attrs["feature_model"] == "tinycnn"
    assert np.isfinite(json.loads((repo / job / "metrics.json").read_text())["mean_r"])


# --- docs/howto/add-a-dataset.md ---------------------------------------------------------


MYLAB_ENTRY = """# My lab's study: raw BIDS + fMRIPrep derivatives on a local disk.
kind: bids
betas: estimate
description: my lab's study
task: things
source:
  path: {path}
  space: MNI152NLin2009cAsym
  res: "2"
tr: 1.5
stimuli:
  column: file_path
  dir: stimuli
  image: "{{value}}"
  drop: {{trial_type: [catch]}}
  test: {{column: trial_type, values: [test]}}
rois:
  GM: {{nilearn: mni152_gm}}
"""


def test_add_a_dataset(repo, tmp_path):
    # A BIDS + fMRIPrep folder shaped as THINGS-fMRI's publishers write it (fixture module
    # cites them) becomes a registry entry, and runs through preprocess and betas.
    from .fmriprep_fixtures import THINGS, make_dataset

    bids_root = tmp_path / "mylab-bids"
    make_dataset(bids_root, THINGS, seed=2, surfaces=False)
    (repo / "config/datasets/mylab.yaml").write_text(MYLAB_ENTRY.format(path=bids_root))
    config = tiny_config()
    config.pop("synthetic")
    config.update(
        dataset="mylab", task=THINGS.task, subjects=THINGS.subjects[:1],
        sessions=THINGS.sessions, runs=THINGS.runs, tr=THINGS.tr, rois=["GM"],
        align={**config["align"], "roi": ["GM"]},  # every ROI named is checked at DAG build
    )  # fmt: skip
    run(repo, config, "results/mylab/sub-01/betas.zarr")
    betas = open_zarr(repo / "results/mylab/sub-01/betas.zarr")
    assert betas.attrs["method"] == "lsa" and betas.sizes["trial"] > 0
    assert betas["roi_GM"].values.any()
    assert (repo / "benchmarks/mylab/betas/sub-01.tsv").exists()


# --- docs/howto/add-a-rule.md ------------------------------------------------------------

SNR_MODULE = '''
"""Per-ROI summary of the noise-ceiling SNR of a betas store."""

from pathlib import Path

import pandas as pd

from brainpipe.storage import open_zarr, write_text_atomic


def roi_snr_table(betas_path: str | Path, out_tsv: str | Path) -> pd.DataFrame:
    """Median ncsnr and voxel count of every ROI of ``betas_path``; written as TSV."""
    betas = open_zarr(betas_path)
    rows = []
    for coord in sorted(c for c in betas.coords if c.startswith("roi_")):
        member = betas[coord].values.astype(bool)
        ncsnr = betas["ncsnr"].values[member]
        rows.append({"roi": coord[4:], "n_voxels": int(member.sum()),
                     "median_ncsnr": float(pd.Series(ncsnr).median())})
    table = pd.DataFrame(rows)
    write_text_atomic(table.to_csv(sep="\\t", index=False), out_tsv)
    return table
'''

SNR_SCRIPT = """from brainpipe.logs import log_to
from brainpipe.roi_snr import roi_snr_table

with log_to(snakemake.log[0]):
    roi_snr_table(snakemake.input.betas, snakemake.output.table)
"""

SNR_RULE = """# Per-ROI noise-ceiling SNR of each subject's betas.


rule roi_snr:
    input:
        betas=f"{RESULTS}/sub-{{subject}}/betas.zarr",
    output:
        table=f"{RESULTS}/sub-{{subject}}/roi_snr.tsv",
    resources:
        mem_mb=per_attempt(1000),
        runtime=5,
    log:
        f"{LOGS}/roi_snr/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/roi_snr/sub-{{subject}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/roi_snr.py"
"""


def test_add_a_rule(repo):
    (repo / "workflow/brainpipe/roi_snr.py").write_text(SNR_MODULE)
    (repo / "workflow/scripts/roi_snr.py").write_text(SNR_SCRIPT)
    (repo / "rules/roi_snr.smk").write_text(SNR_RULE)
    add_import(
        repo / "Snakefile",
        '    include: "rules/report.smk"\n',
        '    include: "rules/report.smk"\n    include: "rules/roi_snr.smk"\n',
    )
    run(repo, tiny_config(), "results/synthetic/sub-01/roi_snr.tsv")
    table = pd.read_csv(repo / "results/synthetic/sub-01/roi_snr.tsv", sep="\t")
    betas = open_zarr(repo / "results/synthetic/sub-01/betas.zarr")
    v1 = betas["roi_V1"].values.astype(bool)
    row = table.set_index("roi").loc["V1"]
    assert row["n_voxels"] == v1.sum()
    assert row["median_ncsnr"] == pytest.approx(float(np.median(betas["ncsnr"].values[v1])))
    lint = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--configfile", "test-config.yaml"],
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo / "workflow")},
        capture_output=True, text=True,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout[-3000:]
