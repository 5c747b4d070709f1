"""NSD as it is published, end to end: loopback S3 -> betas.zarr -> features -> trained model.

The bucket is written by ``tests/nsd_fixtures`` the way NSD's export code writes it
(``/betas`` one chunk per voxel, invalid voxels zeroed and listed in
``valid_sessionNN``, onsets from ``stimpattern``, fsaverage betas with NaN vertices,
captions only in COCO's annotation files).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from brainpipe.config import validate_config
from brainpipe.datasets import nsd
from brainpipe.datasets.nsd_captions import check_captions_configured, nsd_captions
from brainpipe.datasets.registry import load_entry
from brainpipe.download import fetch_dataset
from brainpipe.errors import BrainpipeInputError
from brainpipe.storage import open_zarr

from .conftest import ROOT, run_workflow
from .nsd_fixtures import SESSIONS_PER_SUBJECT, write_nsd_surface, write_nsd_tree
from .s3_server import serve_tree

BUCKET = "natural-scenes-dataset"
CAPTION_KEYS = [
    "coco/annotations/captions_train2017.json",
    "coco/annotations/captions_val2017.json",
]


def test_sessions_per_subject_checked_before_any_download(tmp_path):
    assert tuple(nsd.SESSIONS_PER_SUBJECT.values()) == SESSIONS_PER_SUBJECT
    table = load_entry("nsd").info["sessions_per_subject"]
    assert [table[f"{n:02d}"] for n in range(1, 9)] == list(SESSIONS_PER_SUBJECT)
    dest = tmp_path / "data" / "nsd"
    for subject, session in (("03", "33"), ("04", "31"), ("08", "40")):
        with pytest.raises(BrainpipeInputError, match=rf"sub.*{subject}.*session {session}"):
            fetch_dataset(
                "nsd", dest, subjects=["01", subject], sessions=["01", session],
                source={"endpoint_url": "http://127.0.0.1:9"}, progress=False,
            )  # fmt: skip
    assert not dest.exists() and not dest.with_name(".nsd-objects").exists()
    nsd.check_sessions(["01", "05"], ["40"])  # 40 sessions: fine


def test_published_conventions_region_tr_and_beta_versions():
    entry = load_entry("nsd")
    opts = nsd.NsdOptions.from_config({**entry.info, **entry.merged_source({})})
    assert opts.region == "us-east-2" and opts.source().region == "us-east-2"
    assert opts.tr == pytest.approx(4 / 3)
    mm1 = nsd.NsdOptions.from_config({**entry.merged_source({"source": {"space": "func1mm"}})})
    assert mm1.tr == 1.0
    with pytest.raises(BrainpipeInputError, match=r"source.beta_version.*func1pt8mm only"):
        nsd.NsdOptions.from_config({"space": "func1mm", "beta_version": "betas_assumehrf"})
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(dataset="nsd", source={"space": "func1mm", "beta_version": "betas_assumehrf"})
    config.pop("synthetic", None)
    with pytest.raises(BrainpipeInputError, match="beta_version"):
        validate_config(config)


def test_captions_join_coco_files_on_coco_id(tmp_path):
    truth = write_nsd_tree(tmp_path, sessions=("01",), n_images=40, n_shared=5)
    stim_info = tmp_path / nsd.STIM_INFO_KEY
    files = [tmp_path / k for k in CAPTION_KEYS]
    got = nsd_captions(stim_info, files, list(range(40)))
    assert got == {i: truth["captions"][i] for i in range(40)}
    table = pd.read_csv(stim_info)
    assert {"cocoId", "cocoSplit", "nsdId"} <= set(table.columns)
    with pytest.raises(BrainpipeInputError, match=r"no caption for cocoId .*val2017"):
        nsd_captions(stim_info, files[:1], list(range(40)))  # val2017 file left out
    wanted = {"feature_models": ["gabor", "caption"], "models": ["ridge"]}
    with pytest.raises(BrainpipeInputError, match=r"field 'source.captions'.*caption"):
        check_captions_configured(wanted, {})
    check_captions_configured(wanted, {"captions": {"files": [str(f) for f in files]}})
    check_captions_configured({"feature_models": ["gabor"], "models": ["ridge"]}, {})


@pytest.mark.parametrize("space", ["func1pt8mm", "func1mm", "fsaverage"])
def test_snakemake_from_published_layout_to_trained_model(space, tmp_path):
    """fetch -> ingest -> features (gabor, and caption from COCO files) -> ridge -> metrics.

    Volume spaces: invalid voxels (valid_sessionNN); fsaverage: NaN vertices and an ROI
    (floc-faces) that exists only on the subject's native surface, mapped to fsaverage.
    """
    tree = tmp_path / "bucket"
    sessions = ("01", "02")
    truth = write_nsd_tree(tree, sessions=sessions, space="func1pt8mm" if space == "fsaverage"
                           else space)  # fmt: skip
    surface = write_nsd_surface(tree, sessions=sessions) if space == "fsaverage" else None
    roi = "faces" if space == "fsaverage" else "nsdgeneral"
    with serve_tree(tree, BUCKET) as endpoint:
        config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
        captions = {"bucket": BUCKET, "keys": CAPTION_KEYS, "endpoint_url": endpoint}
        config.update(
            dataset="nsd", subjects=["01"], sessions=list(sessions), runs=["01"], task="nsd",
            tr=1.0 if space == "func1mm" else 1.333333, rois=[roi],
            feature_models=["gabor", "caption"], models=["ridge"], model_params={},
            source={"endpoint_url": endpoint, "space": space, "captions": captions},
        )  # fmt: skip
        config.pop("synthetic", None)
        config["align"]["roi"] = [roi]  # every ROI the config names must be NSD's (DAG check)
        targets = [f"results/nsd/models/sub-01/{roi}/ridge-{f}/metrics.json"
                   for f in ("gabor", "caption")]  # fmt: skip
        result = run_workflow(tmp_path / "run", config, *targets, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "run"
    stimuli = pd.read_csv(run / "data/nsd/stimuli/stimuli.tsv", sep="\t", dtype=str)
    ids = stimuli["stimulus"].str.removeprefix("nsd-").astype(int)
    assert list(stimuli["caption"]) == [truth["captions"][i] for i in ids]
    ds = open_zarr(run / "results/nsd/sub-01/betas.zarr")
    in_roi = ds[f"roi_{roi}"].values
    if space == "fsaverage":
        assert ds.attrs["space"] == "nsd-fsaverage"
        nan_voxels = np.isnan(ds["betas"].values[:750]).all(axis=0)
        assert nan_voxels.sum() == sum(len(v) for v in surface["nan"].values())
        faces = np.concatenate([surface["labels"][("floc-faces", h)] for h in ("lh", "rh")])
        np.testing.assert_array_equal(in_roi, (faces >= 1) & (faces <= 5))
        missing = nan_voxels[in_roi]
    else:
        assert ds.attrs["tr"] == pytest.approx(1.0 if space == "func1mm" else 4 / 3)
        mask = truth["mask"]["01"]
        valid = np.stack([truth["valid"][("01", s)][mask] for s in sessions])
        np.testing.assert_array_equal(ds["valid"].values, valid)
        missing = ~valid.all(axis=0)[in_roi]
    predictions = open_zarr(run / f"results/nsd/models/sub-01/{roi}/ridge-gabor/predictions.zarr")
    # every ROI voxel with an invalid session / NaN vertex was filled, and only those
    assert int(predictions.attrs["n_voxels_filled"]) == int(missing.sum())
    assert np.isfinite(predictions["predicted"].values).all()
    for target in targets:
        metrics = json.loads((run / target).read_text())
        assert metrics["n_voxels"] == int(ds[f"roi_{roi}"].sum())
        assert np.isfinite(metrics["mean_r"])
