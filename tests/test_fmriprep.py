"""BIDS + fMRIPrep datasets (registry kind ``bids``): BOLD5000- and THINGS-fMRI-shaped.

Fixtures: :mod:`tests.fmriprep_fixtures` (fMRIPrep's documented output names and
confounds columns; each dataset's events columns as its publishers write them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from brainpipe.betas import estimate_subject_betas
from brainpipe.bids import BidsLayout, RunKey, read_events, run_keys
from brainpipe.confounds import check_confounds_config
from brainpipe.datasets import fmriprep
from brainpipe.download import fetch_dataset
from brainpipe.errors import BrainpipeInputError
from brainpipe.preprocess import preprocess_subject
from brainpipe.storage import open_zarr
from brainpipe.validation import validate_subject

from .conftest import ROOT, run_workflow
from .fmriprep_fixtures import (
    BOLD5000,
    SPACE,
    SURFACE_LABELS,
    SURFACE_VERTICES,
    THINGS,
    make_dataset,
    surface_parcels,
    write_label,
)
from .s3_server import serve_tree

MNI = {"space": SPACE, "res": "2"}
SCRUB = {"strategy": ["motion", "high_pass", "scrub"], "motion": "basic", "scrub": 0,
         "fd_threshold": 0.5}  # fmt: skip


@pytest.fixture(scope="module")
def bold5000(tmp_path_factory):
    root = tmp_path_factory.mktemp("bold5000") / "ds001499"
    truth = make_dataset(root, BOLD5000, seed=1)
    return root, truth


@pytest.fixture(scope="module")
def bold5000_legacy(tmp_path_factory):
    """BOLD5000 as on OpenNeuro: fMRIPrep 1.1 names, T1w space (the registry's default)."""
    root = tmp_path_factory.mktemp("bold5000-legacy") / "ds001499"
    truth = make_dataset(root, BOLD5000, seed=3, legacy=True, space="T1w")
    return root, truth


@pytest.fixture(scope="module")
def things(tmp_path_factory):
    root = tmp_path_factory.mktemp("things") / "ds004192"
    truth = make_dataset(root, THINGS, seed=2)
    return root, truth


def fetch_bold5000(root: Path, dest: Path, subjects=("CSI1", "CSI2"), **source) -> Path:
    return fetch_dataset(
        "bold5000", dest, subjects=list(subjects), sessions=BOLD5000.sessions,
        runs=BOLD5000.runs, task=BOLD5000.task, source={"path": str(root), **MNI, **source},
        progress=False,
    )  # fmt: skip


# ----------------------------------------------------------------------------- the view


def test_bold5000_folder_is_indexed_checked_and_linked(bold5000, tmp_path):
    root, _ = bold5000
    dest = fetch_bold5000(root, tmp_path / "data" / "bold5000")
    layout = BidsLayout(dest, BOLD5000.task)
    key = RunKey("CSI1", "01", "01")
    prep = root / "derivatives/fmriprep/sub-CSI1/ses-01/func"
    stem = "sub-CSI1_ses-01_task-5000scenes_run-01"
    # time series are links to fMRIPrep's files, never copies
    assert layout.bold(key).is_symlink()
    assert layout.bold(key).resolve() == (
        prep / f"{stem}_space-{SPACE}_res-2_desc-preproc_bold.nii.gz"
    )
    func = layout.bold(key).parent
    assert (func / f"{stem}_space-{SPACE}_res-2_desc-preproc_bold.nii.gz").is_symlink()
    assert (func / f"{stem}_desc-confounds_timeseries.tsv").resolve() == (
        prep / f"{stem}_desc-confounds_timeseries.tsv"
    )
    assert (func / f"{stem}_hemi-L_space-fsaverage5_bold.func.gii").is_symlink()  # surfaces
    assert json.loads(layout.sidecar(key).read_text())["RepetitionTime"] == 2.0
    # events: the BOLD5000 columns kept, ImgName -> stimulus with rep_ stripped
    events = read_events(layout.events(key))
    raw = pd.read_csv(root / f"sub-CSI1/ses-01/func/{stem}_events.tsv", sep="\t")
    assert len(events) == len(raw) and {"ImgName", "ImgType", "stim_file"} <= set(events.columns)
    rep = events["ImgName"].str.startswith("rep_")
    assert rep.any() and not events["stimulus"].str.startswith("rep_").any()
    assert (events.loc[rep, "stimulus"] + ".jpg").isin(events.loc[rep, "ImgName"].str[4:]).any()
    # stimuli: files under COCO/ImageNet/Scene, the rep_ images are the test set
    table = pd.read_csv(layout.stimuli_table, sep="\t", dtype={"stimulus": str})
    assert table["stimulus"].is_unique
    assert set(table.loc[table["shared"] == 1, "stimulus"]) == set(events.loc[rep, "stimulus"])
    assert all((layout.stimuli_dir / p).exists() for p in table["image"])
    assert {p.split("/")[1] for p in table["image"]} == {"COCO", "ImageNet", "Scene"}
    # ROI masks (dataset-provided, LH + RH) on the BOLD grid, inside the brain mask
    brain = np.asarray(nib.load(layout.brain_mask("CSI1")).dataobj) > 0
    for roi in ("EarlyVis", "PPA"):
        img = nib.load(layout.roi_mask("CSI1", roi))
        assert img.shape == brain.shape and np.allclose(
            img.affine, nib.load(layout.bold(key)).affine
        )
        m = np.asarray(img.dataobj) > 0
        assert m.any() and not (m & ~brain).any()
    manifest = validate_subject(dest, "CSI1", BOLD5000.sessions, BOLD5000.runs, 2.0, BOLD5000.task)
    assert manifest["n_voxels"] == int(brain.sum())


def test_bold5000_as_published_with_fmriprep_1_1_names(bold5000_legacy, tmp_path):
    root, truth = bold5000_legacy
    dest = fetch_dataset(
        "bold5000", tmp_path / "data" / "bold5000", subjects=["CSI1"], sessions=BOLD5000.sessions,
        runs=BOLD5000.runs, task=BOLD5000.task, source={"path": str(root)}, progress=False,
    )  # fmt: skip
    layout = BidsLayout(dest, BOLD5000.task)
    key = RunKey("CSI1", "01", "01")
    stem = "sub-CSI1_ses-01_task-5000scenes_run-01"
    prep = root / "derivatives/fmriprep/sub-CSI1/ses-01/func"
    assert layout.bold(key).resolve() == prep / f"{stem}_bold_space-T1w_preproc.nii.gz"
    func = layout.bold(key).parent
    # the confounds are rewritten with today's column names, values unchanged
    conf = pd.read_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t")
    old = pd.read_csv(prep / f"{stem}_bold_confounds.tsv", sep="\t")
    np.testing.assert_array_equal(conf["trans_x"], old["X"])
    np.testing.assert_array_equal(conf["white_matter"], old["WhiteMatter"])
    assert {"rot_z", "framewise_displacement", "std_dvars", "a_comp_cor_00", "cosine00"} <= set(
        conf.columns
    )
    assert (func / f"{stem}_hemi-L_space-fsaverage5_bold.func.gii").is_symlink()
    runs = run_keys("CSI1", BOLD5000.sessions, BOLD5000.runs)
    r, _ = _betas_accuracy(layout, truth, "CSI1", runs, tmp_path / "scrub", SCRUB)
    assert r > 0.7


def test_things_adapter_drops_catch_trials_and_marks_test_images(things, tmp_path):
    root, _ = things
    dest = fetch_dataset(
        "things-fmri", tmp_path / "data" / "things-fmri", subjects=THINGS.subjects,
        sessions=THINGS.sessions, runs=THINGS.runs, task=THINGS.task,
        source={"path": str(root), **MNI}, progress=False,
    )  # fmt: skip
    layout = BidsLayout(dest, THINGS.task)
    events = read_events(layout.events(RunKey("01", "things01", "02")))
    raw = pd.read_csv(
        root / "sub-01/ses-things01/func/sub-01_ses-things01_task-things_run-02_events.tsv",
        sep="\t",
    )
    assert (raw["trial_type"] == "catch").sum() == 1
    assert len(events) == len(raw) - 1 and "catch" not in set(events["trial_type"])
    table = pd.read_csv(layout.stimuli_table, sep="\t", dtype={"stimulus": str})
    test_ids = set(raw.loc[raw["trial_type"] == "test", "file_path"].map(lambda v: Path(v).stem))
    all_test = set(table.loc[table["shared"] == 1, "stimulus"])
    assert test_ids <= all_test and len(all_test) == THINGS.n_shared
    # captions are the THINGS category (the image's folder)
    row = table[table["stimulus"] == "air_conditioner_12s"]
    assert row["caption"].iloc[0] == "air conditioner"
    # ROI from the template nilearn ships (MNI152 grey matter), resampled to the BOLD grid
    gm = np.asarray(nib.load(layout.roi_mask("01", "GM")).dataobj) > 0
    assert gm.any() and gm.shape == nib.load(layout.brain_mask("01")).shape


def _break(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(root, copy)
    return copy


RUN = "sub-CSI1_ses-01_task-5000scenes_run-02"
FUNC = "derivatives/fmriprep/sub-CSI1/ses-01/func"


@pytest.mark.parametrize(
    ("case", "field", "message"),
    [
        ("confounds", "<file>", "confounds file of this run is missing"),
        ("space", "space", "is not among the spaces fMRIPrep wrote"),
        ("tr", "RepetitionTime", "disagrees with the NIfTI header"),
        ("events", "<file>", "this run has no events file"),
        ("no_trials", "ImgName", "no stimulus trials"),
        ("stimulus_file", "ImgName", "its file"),
        ("column", "ImgName", "column is missing"),
    ],
)
def test_bad_derivatives_stop_naming_file_and_field(bold5000, tmp_path, case, field, message):
    root = _break(bold5000[0], tmp_path)
    func = root / FUNC
    bold = func / f"{RUN}_space-{SPACE}_res-2_desc-preproc_bold.nii.gz"
    culprit: Path
    if case == "confounds":
        culprit = func / f"{RUN}_desc-confounds_timeseries.tsv"
        culprit.unlink()
    elif case == "space":
        culprit = bold
        for f in func.glob(f"{RUN}_space-{SPACE}_res-2_desc-preproc_bold.*"):
            f.rename(f.with_name(f.name.replace(SPACE, "MNI152NLin6Asym")))
    elif case == "tr":
        culprit = func / f"{RUN}_space-{SPACE}_res-2_desc-preproc_bold.json"
        culprit.write_text(json.dumps({"RepetitionTime": 1.5}))
    elif case == "events":
        culprit = root / f"sub-CSI1/ses-01/func/{RUN}_events.tsv"
        culprit.unlink()
    else:
        culprit = root / f"sub-CSI1/ses-01/func/{RUN}_events.tsv"
        ev = pd.read_csv(culprit, sep="\t", dtype=str, keep_default_na=False)
        if case == "no_trials":
            ev["ImgName"] = "n/a"
        elif case == "stimulus_file":
            ev.loc[0, "ImgName"] = "COCO_train2014_999999999999.jpg"
            ev.loc[0, "ImgType"] = "coco"
        else:
            ev = ev.drop(columns="ImgName")
        ev.to_csv(culprit, sep="\t", index=False)
    dest = tmp_path / "data" / "bold5000"
    with pytest.raises(BrainpipeInputError) as err:
        fetch_bold5000(root, dest)
    assert err.value.source == str(culprit) and err.value.field == field, str(err.value)
    assert message in str(err.value)
    assert not dest.exists() and not list(dest.parent.glob(".bold5000*tmp*"))  # nothing half-made


def test_space_and_strategy_config_are_checked(bold5000, tmp_path):
    with pytest.raises(BrainpipeInputError, match=r"source.rois.V1.nilearn"):
        fmriprep.FmriprepOptions.from_config({"rois": {"V1": {"nilearn": "juelich"}}}, "x.yaml")
    with pytest.raises(BrainpipeInputError, match=r"stimuli.colum"):
        fmriprep.StimulusAdapter.from_config({"colum": "x"}, "x.yaml")
    with pytest.raises(BrainpipeInputError, match=r"preprocess.confounds.strategy"):
        check_confounds_config({"strategy": ["motion", "wiggle"]})
    with pytest.raises(BrainpipeInputError, match="exactly one of"):
        check_confounds_config({"preset": "simple", "strategy": ["motion"]})
    assert check_confounds_config(None) is None
    with pytest.raises(BrainpipeInputError, match=r"source.space.*fsnative differs per subject"):
        fmriprep.FmriprepOptions.from_config({"space": "fsnative"}, "x.yaml")
    assert fmriprep.FmriprepOptions.from_config({"space": "fsaverage5"}, "x").space == "fsaverage5"
    with pytest.raises(BrainpipeInputError, match=r"source.rois.GM.nilearn.*no fsaverage atlas"):
        fmriprep.FmriprepOptions.from_config(
            {"space": "fsaverage6", "rois": {"GM": {"nilearn": "mni152_gm"}}}, "x.yaml"
        )
    with pytest.raises(BrainpipeInputError, match=r"source.rois.V1.file.*one file per hemi"):
        fmriprep.FmriprepOptions.from_config(
            {"space": "fsaverage", "rois": {"V1": {"file": "lh.V1.label"}}}, "x.yaml"
        )
    with pytest.raises(BrainpipeInputError, match=r"field 'space'.*T1w"):
        fetch_bold5000(bold5000[0], tmp_path / "d", space="T1w", res=None)


# ------------------------------------------------------------------ confounds, ground truth


def _betas_accuracy(layout, truth, subject, runs, out: Path, confounds) -> tuple[float, float]:
    preprocess_subject(layout, subject, runs, out / "preproc.zarr", confounds=confounds)
    estimate_subject_betas(out / "preproc.zarr", layout, subject, runs, out / "betas.zarr")
    betas = open_zarr(out / "betas.zarr")
    est = betas["betas"].values
    true = truth.amplitudes[subject].loc[betas["stimulus"].values].to_numpy()
    r = float(np.corrcoef(est.ravel(), true.ravel())[0, 1])
    return r, float(np.sqrt(np.mean((est - true) ** 2)))


def test_confound_regression_recovers_true_amplitudes_better(bold5000, tmp_path):
    root, truth = bold5000
    dest = fetch_bold5000(root, tmp_path / "data" / "bold5000", subjects=["CSI1"])
    layout = BidsLayout(dest, BOLD5000.task)
    runs = run_keys("CSI1", BOLD5000.sessions, BOLD5000.runs)
    scores = {
        name: _betas_accuracy(layout, truth, "CSI1", runs, tmp_path / name, cfg)
        for name, cfg in [
            ("none", None),
            ("motion", {"strategy": ["motion"], "motion": "basic"}),
            ("scrubbing", SCRUB),
        ]
    }
    (r0, e0), (r1, e1), (r2, e2) = scores["none"], scores["motion"], scores["scrubbing"]
    assert r1 > r0 + 0.2 and e1 < 0.6 * e0, scores  # regressing motion helps a lot
    assert r2 > r1 and e2 < e1, scores  # censoring the spike volumes helps further
    pre = open_zarr(tmp_path / "scrubbing" / "preproc.zarr")
    keep = pre["sample_mask"].values
    assert (~keep).sum() == 3 * len(runs)  # the fixture's 3 high-FD volumes per run
    assert np.all(pre["bold"].values[~keep] == 0)


@pytest.mark.parametrize("method", ["lsa", "glmsingle"])
def test_censored_volumes_do_not_enter_the_betas(bold5000, tmp_path, method):
    """Whatever the censored volumes hold, the betas are the same: they left the design."""
    import zarr

    from brainpipe.betas import estimate_betas

    root, _ = bold5000
    dest = fetch_bold5000(root, tmp_path / "data" / "bold5000", subjects=["CSI1"])
    layout = BidsLayout(dest, BOLD5000.task)
    runs = run_keys("CSI1", BOLD5000.sessions, BOLD5000.runs)
    pre = tmp_path / "preproc.zarr"
    preprocess_subject(layout, "CSI1", runs, pre, confounds=SCRUB)
    config = {"betas": {"method": method, "types": ["A", "B"]}}
    estimate_betas(pre, layout, "CSI1", runs, tmp_path / "a.zarr", config=config)
    group = zarr.open_group(str(pre), mode="r+")
    keep = np.asarray(group["sample_mask"][:], dtype=bool)
    bold = np.asarray(group["bold"][:])
    bold[~keep] = 500.0 * np.random.default_rng(0).standard_normal(((~keep).sum(), bold.shape[1]))
    group["bold"][:] = bold
    estimate_betas(pre, layout, "CSI1", runs, tmp_path / "b.zarr", config=config)
    a, b = (
        open_zarr(tmp_path / "a.zarr")["betas"].values,
        open_zarr(tmp_path / "b.zarr")["betas"].values,
    )
    np.testing.assert_allclose(a, b, atol=1e-3 * np.abs(a).max())


# ------------------------------------------------------------------ end to end (Snakemake)


def pipeline_config(dataset: str, shape, rois: list[str], **source) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.pop("synthetic", None)
    config.update(
        dataset=dataset, task=shape.task, subjects=shape.subjects, sessions=shape.sessions,
        runs=shape.runs, tr=shape.tr, rois=rois, feature_models=["gabor"],
        models=["ridge", "ridgedecoder"],
        model_params={"ridge": {"features": ["gabor"]},
                      "ridgedecoder": {"rois": [rois[0]], "features": ["gabor"]}},
        source={**MNI, **source},
        preprocess={"detrend": True, "high_pass_hz": 0.01, "smoothing_fwhm_mm": None,
                    "confounds": SCRUB},
        betas={"method": "lsa", "voxel_chunk": 4096},
        features={"n_components": 8},
        splits={"shared_train_fraction": 0.0},
        align={"methods": []},
    )  # fmt: skip
    return config


def _check_end_to_end(workdir: Path, dataset: str, shape, truth, rois: list[str]) -> None:
    results = workdir / "results" / dataset
    for sub in shape.subjects:
        betas = open_zarr(results / f"sub-{sub}" / "betas.zarr")
        pre = open_zarr(results / f"sub-{sub}" / "preproc.zarr")
        assert (~pre["sample_mask"].values).sum() == 3 * len(shape.sessions) * len(shape.runs)
        for roi in rois:
            assert betas[f"roi_{roi}"].values.any()
        est = betas["betas"].values
        true = truth.amplitudes[sub].loc[betas["stimulus"].values].to_numpy()
        assert np.corrcoef(est.ravel(), true.ravel())[0, 1] > 0.7
        assert betas.attrs["tr"] == pytest.approx(shape.tr)
        for roi in rois:
            metrics = results / f"models/sub-{sub}/{roi}/ridge-gabor/metrics.json"
            assert json.loads(metrics.read_text())
    summary = pd.read_csv(results / "summary.tsv", sep="\t", dtype={"subject": str})
    assert set(summary["subject"].astype(str)) == set(shape.subjects)
    splits = pd.read_csv(results / "splits.tsv", sep="\t", dtype={"stimulus": str})
    assert (splits["split"] == "test").sum() == shape.n_shared


@pytest.mark.integration
def test_bold5000_from_folder_to_models(bold5000_legacy, tmp_path):
    """BOLD5000 as published (fMRIPrep 1.1 names, T1w space), from a local folder."""
    root, truth = bold5000_legacy
    rois = ["EarlyVis", "PPA"]
    config = pipeline_config("bold5000", BOLD5000, rois, path=str(root))
    config["source"] = {"path": str(root)}  # the registry's space (T1w)
    result = run_workflow(tmp_path, config, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _check_end_to_end(tmp_path, "bold5000", BOLD5000, truth, rois)


@pytest.mark.integration
def test_things_from_openneuro_over_loopback_s3_to_models(things, tmp_path):
    root, truth = things
    with serve_tree(root.parent, "openneuro.org") as endpoint:
        config = pipeline_config("things-fmri", THINGS, ["GM"], endpoint_url=endpoint)
        result = run_workflow(tmp_path, config, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _check_end_to_end(tmp_path, "things-fmri", THINGS, truth, ["GM"])
    raw = tmp_path / "data" / ".things-fmri-bids"
    assert (raw / "derivatives/fmriprep/dataset_description.json").exists()
    # only what the pipeline reads was fetched: no boldrefs, no other spaces
    assert not list(raw.rglob("*_boldref.nii.gz"))


def test_confounds_missing_a_strategy_column_stop_before_any_run(bold5000, tmp_path):
    root = _break(bold5000[0], tmp_path)
    conf = root / FUNC / f"{RUN}_desc-confounds_timeseries.tsv"
    table = pd.read_csv(conf, sep="\t")
    table.drop(columns=[c for c in table.columns if c.startswith("white_matter")]).to_csv(
        conf, sep="\t", index=False, na_rep="n/a"
    )
    dest = fetch_bold5000(root, tmp_path / "data" / "bold5000", subjects=["CSI1"])
    layout = BidsLayout(dest, BOLD5000.task)
    out = tmp_path / "preproc.zarr"
    with pytest.raises(BrainpipeInputError) as err:
        preprocess_subject(
            layout, "CSI1", run_keys("CSI1", BOLD5000.sessions, BOLD5000.runs), out,
            confounds={"strategy": ["motion", "wm_csf"]},
        )  # fmt: skip
    assert err.value.source.endswith(f"{RUN}_desc-confounds_timeseries.tsv"), str(err.value)
    assert "white_matter" in str(err.value) and not out.exists()


def test_an_roi_the_bids_dataset_lacks_stops_the_dag_before_any_job(bold5000_legacy, tmp_path):
    """`rois: [EarlyVis, FFA]` on BOLD5000 (its `rois` block has EarlyVis and PPA)."""
    root, _ = bold5000_legacy
    config = pipeline_config("bold5000", BOLD5000, ["EarlyVis", "FFA"], path=str(root))
    config["source"] = {"path": str(root)}
    result = run_workflow(tmp_path, config, "-n", timeout=300)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "rois.1" in out and "'FFA'" in out and "EarlyVis" in out and "PPA" in out, out[-2000:]
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_runs_all_takes_each_sessions_own_runs(bold5000, tmp_path):
    """BOLD5000's sessions have 9 or 10 runs: `runs: all` takes what each session has."""
    root = _break(bold5000[0], tmp_path)
    for f in list(root.rglob("*ses-02_task-5000scenes_run-02_*")):
        f.unlink()  # sub-CSI1's session 02 now has one run, session 01 two
    with pytest.raises(BrainpipeInputError, match="run-02"):
        fetch_bold5000(root, tmp_path / "data" / "listed", subjects=["CSI1"])
    dest = fetch_dataset(
        "bold5000", tmp_path / "data" / "bold5000", subjects=["CSI1"],
        sessions=BOLD5000.sessions, runs="all", task=BOLD5000.task,
        source={"path": str(root), **MNI}, progress=False,
    )  # fmt: skip
    layout = BidsLayout(dest, BOLD5000.task)
    keys = run_keys("CSI1", BOLD5000.sessions, "all", layout)
    assert [(k.session, k.run) for k in keys] == [("01", "01"), ("01", "02"), ("02", "01")]
    manifest = validate_subject(dest, "CSI1", BOLD5000.sessions, "all", BOLD5000.tr,
                                task=BOLD5000.task)  # fmt: skip
    assert [(r["session"], r["run"]) for r in manifest["runs"]] == [
        ("01", "01"), ("01", "02"), ("02", "01")
    ]  # fmt: skip
    with pytest.raises(BrainpipeInputError, match="ses-03 has no run"):
        run_keys("CSI1", ["01", "03"], "all", layout)


# ------------------------------------------------------------------ surface (fsaverage)

SURFACE = "fsaverage5"
LABELS = SURFACE_LABELS.format(space=SURFACE)
SURFACE_ROIS = {
    "V1": {"file": f"{LABELS}/{{hemi}}.V1_exvivo.label"},
    "LO": {"file": f"{LABELS}/{{hemi}}.aparc.annot", "labels": ["lateraloccipital"]},
}


@pytest.fixture(scope="module")
def bold5000_surface(tmp_path_factory):
    """BOLD5000-shaped, every run also on fsaverage5 (fMRIPrep's func.gii per hemisphere)."""
    root = tmp_path_factory.mktemp("bold5000-surface") / "ds001499"
    truth = make_dataset(root, BOLD5000, seed=4, surface_space=SURFACE)
    return root, truth


def fetch_surface(root: Path, dest: Path, **source) -> Path:
    return fetch_dataset(
        "bold5000", dest, subjects=["CSI1"], sessions=BOLD5000.sessions, runs=BOLD5000.runs,
        task=BOLD5000.task, progress=False,
        source={"path": str(root), "space": SURFACE, "rois": SURFACE_ROIS, **source},
    )  # fmt: skip


def _surface_accuracy(betas, truth, subject: str) -> tuple[float, float]:
    """Pearson r and RMSE of a surface store's betas against the true amplitudes."""
    n_v = SURFACE_VERTICES[SURFACE]
    column = betas["vertex"].values + n_v * (betas["hemi"].values == "rh")
    true = truth.surface[subject].loc[betas["stimulus"].values].to_numpy()[:, column]
    est = betas["betas"].values
    return float(np.corrcoef(est.ravel(), true.ravel())[0, 1]), float(
        np.sqrt(np.mean((est - true) ** 2))
    )


def test_surface_runs_from_view_to_betas_recover_true_amplitudes(bold5000_surface, tmp_path):
    """fsaverage5: view -> validate -> preprocess (confounds) -> LSA and GLMsingle betas."""
    from brainpipe.betas import estimate_betas

    root, truth = bold5000_surface
    dest = fetch_surface(root, tmp_path / "data" / "bold5000")
    layout = BidsLayout(dest, BOLD5000.task)
    key = RunKey("CSI1", "01", "01")
    assert layout.surface_space == SURFACE and not layout.bold(key).exists()
    assert not layout.brain_mask("CSI1").exists()  # no NIfTI mask on a surface
    prep = root / "derivatives/fmriprep/sub-CSI1/ses-01/func"
    for h in ("L", "R"):
        name = f"sub-CSI1_ses-01_task-5000scenes_run-01_hemi-{h}_space-{SURFACE}_bold.func.gii"
        assert layout.surface_bold(key, h).resolve() == prep / name
    assert layout.available_rois("CSI1") == ["LO", "V1", "cortex"]
    manifest = validate_subject(dest, "CSI1", BOLD5000.sessions, BOLD5000.runs, 2.0,
                                BOLD5000.task)  # fmt: skip
    # the constant medial wall is exactly what the input policy drops
    np.testing.assert_array_equal(manifest["dead_voxels"], truth.medial_wall)
    n_v = SURFACE_VERTICES[SURFACE]
    parcels = surface_parcels(n_v)
    assert manifest["rois"] == {
        "V1": 2 * int((parcels == 1).sum()), "LO": 2 * int((parcels == 2).sum()),
        "cortex": 2 * n_v,
    }  # fmt: skip
    runs = run_keys("CSI1", BOLD5000.sessions, BOLD5000.runs)
    pre_path = tmp_path / "preproc.zarr"
    preprocess_subject(layout, "CSI1", runs, pre_path, confounds=SCRUB, manifest=manifest)
    pre = open_zarr(pre_path)
    assert pre.attrs["space"] == SURFACE and pre.attrs["n_vertices"] == {"lh": n_v, "rh": n_v}
    assert pre.sizes["voxel"] == 2 * n_v - len(truth.medial_wall)
    assert (~pre["sample_mask"].values).sum() == 3 * len(runs)  # scrubbed spikes
    figures = {}
    for method in ("lsa", "glmsingle"):
        out = tmp_path / f"{method}.zarr"
        config = {"betas": {"method": method, "types": ["A", "B"]}}
        estimate_betas(pre_path, layout, "CSI1", runs, out, config=config)
        betas = open_zarr(out)
        assert set(betas["hemi"].values) == {"lh", "rh"} and betas.attrs["surface"] == SURFACE
        assert "affine" not in betas.attrs
        v1 = parcels[betas["vertex"].values] == 1
        np.testing.assert_array_equal(betas["roi_V1"].values, v1)
        assert betas["roi_cortex"].values.all()
        figures[method] = _surface_accuracy(betas, truth, "CSI1")
    # confound regression helps on the surface as on volumes (the same motion confounds)
    preprocess_subject(layout, "CSI1", runs, tmp_path / "none.zarr", manifest=manifest)
    estimate_betas(tmp_path / "none.zarr", layout, "CSI1", runs, tmp_path / "none-lsa.zarr")
    figures["lsa, no confounds"] = _surface_accuracy(open_zarr(tmp_path / "none-lsa.zarr"), truth,
                                                     "CSI1")  # fmt: skip
    print("surface betas vs truth (r, rmse):", figures)
    assert figures["lsa"][0] > 0.7 and figures["glmsingle"][0] > 0.7, figures
    assert figures["lsa"][0] > figures["lsa, no confounds"][0] + 0.2, figures


def _gifti_series(path: Path) -> np.ndarray:
    return np.stack([d.data for d in nib.load(path).darrays])


SRUN = "sub-CSI1_ses-01_task-5000scenes_run-02"


@pytest.mark.parametrize(
    ("case", "field", "message"),
    [
        ("no_right", "hemi", "no R hemisphere"),
        ("space", "space", "surface spaces it wrote: ['fsaverage5']"),
        ("vertices", "Dim0", "fsaverage5 has 10242 per hemisphere"),
        ("lengths", "DataArray", "the left hemisphere"),
        ("label", "vertex", "outside the surface"),
        ("parcel", "source.rois.LO.labels", "not in the annotation"),
    ],
)
def test_bad_surface_derivatives_stop_naming_file_and_field(
    bold5000_surface, tmp_path, case, field, message
):
    root = _break(bold5000_surface[0], tmp_path)
    func = root / FUNC
    right = func / f"{SRUN}_hemi-R_space-{SURFACE}_bold.func.gii"
    source: dict = {}
    culprit = right
    if case == "no_right":
        right.unlink()
    elif case == "space":
        culprit = func / f"{SRUN.replace('run-02', 'run-01')}_hemi-L_space-fsaverage6_bold.func.gii"
        source = {"space": "fsaverage6"}
    elif case == "vertices":
        data = _gifti_series(right)[:, :10000]
        nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(r) for r in data]), right)
    elif case == "lengths":
        data = _gifti_series(right)[:-5]
        nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(r) for r in data]), right)
    elif case == "label":
        culprit = root / LABELS / "rh.V1_exvivo.label"
        write_label(culprit, np.array([5, 20000]), SURFACE)
    else:
        culprit = root / LABELS / "lh.aparc.annot"
        source = {"rois": {"LO": {**SURFACE_ROIS["LO"], "labels": ["fusiform"]}}}
    dest = tmp_path / "data" / "bold5000"
    with pytest.raises(BrainpipeInputError) as err:
        fetch_surface(root, dest, **source)
    assert err.value.source == str(culprit) and err.value.field == field, str(err.value)
    assert message in str(err.value)
    assert not dest.exists()


def test_surface_inputs_checked_before_compute(bold5000_surface, tmp_path):
    """validate_inputs decodes every GIFTI: a damaged file, non-finite samples."""
    root = _break(bold5000_surface[0], tmp_path)
    right = root / FUNC / f"{SRUN}_hemi-R_space-{SURFACE}_bold.func.gii"
    left = root / FUNC / f"{SRUN}_hemi-L_space-{SURFACE}_bold.func.gii"
    data = _gifti_series(left)
    data[7, :] = np.nan  # a broken volume: censored
    data[:, 3] = np.nan  # a vertex never sampled: dropped as dead
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(r) for r in data]), left)
    dest = fetch_surface(root, tmp_path / "data" / "bold5000")
    manifest = validate_subject(dest, "CSI1", BOLD5000.sessions, BOLD5000.runs, 2.0,
                                BOLD5000.task)  # fmt: skip
    run = next(r for r in manifest["runs"] if (r["session"], r["run"]) == ("01", "02"))
    assert run["censored_scans"] == [7] and 3 in manifest["dead_voxels"]
    layout = BidsLayout(dest, BOLD5000.task)
    runs = run_keys("CSI1", BOLD5000.sessions, BOLD5000.runs)
    preprocess_subject(layout, "CSI1", runs, tmp_path / "p.zarr", manifest=manifest)
    pre = open_zarr(tmp_path / "p.zarr")
    assert pre["censored"].values.sum() == 1 and ["lh", 3] in pre.attrs["dropped_vertices"]
    assert np.isfinite(pre["bold"].values[~pre["censored"].values]).all()
    # a damaged (truncated) GIFTI stops validate_inputs naming it
    right.write_bytes(right.read_bytes()[: right.stat().st_size // 2])
    with pytest.raises(BrainpipeInputError) as err:
        validate_subject(dest, "CSI1", BOLD5000.sessions, BOLD5000.runs, 2.0, BOLD5000.task)
    assert err.value.source == str(layout.surface_bold(RunKey("CSI1", "01", "02"), "R"))
    assert err.value.field == "<gifti>"


@pytest.mark.integration
def test_surface_bold5000_from_folder_to_models(bold5000_surface, tmp_path):
    """One subject on fsaverage5 through the whole workflow: betas, models, report."""
    root, truth = bold5000_surface
    config = pipeline_config("bold5000", BOLD5000, ["V1"], path=str(root))
    config.update(
        subjects=["CSI1"], models=["ridge"], model_params={"ridge": {"features": ["gabor"]}}
    )
    config["source"] = {"path": str(root), "space": SURFACE, "rois": SURFACE_ROIS}
    result = run_workflow(tmp_path, config, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = tmp_path / "results" / "bold5000"
    betas = open_zarr(results / "sub-CSI1" / "betas.zarr")
    assert betas.attrs["space"] == SURFACE and betas["roi_V1"].values.any()
    assert _surface_accuracy(betas, truth, "CSI1")[0] > 0.7
    metrics = json.loads((results / "models/sub-CSI1/V1/ridge-gabor/metrics.json").read_text())
    assert metrics
    assert (results / "report.html").stat().st_size > 0


@pytest.mark.parametrize(("space", "n_vertices"), [("fsaverage6", 40962), ("fsaverage", 163842)])
def test_other_fsaverage_spaces_are_told_apart_by_vertex_count(tmp_path, space, n_vertices):
    """fsaverage6 / fsaverage runs: accepted as spaces, checked by their vertex counts."""
    from brainpipe.surface import expected_vertices, gifti_header, load_gifti_series

    opts = fmriprep.FmriprepOptions.from_config(
        {"space": space, "rois": {"V1": {"file": {"L": "lh.V1.label", "R": "rh.V1.label"}}}}, "x"
    )
    assert opts.space == space
    path = tmp_path / f"sub-01_task-x_run-1_hemi-L_space-{space}_bold.func.gii"
    arrays = [nib.gifti.GiftiDataArray(np.full(n_vertices, v, np.float32)) for v in (1.0, 2.0)]
    nib.save(nib.gifti.GiftiImage(darrays=arrays), path)
    assert gifti_header(path) == (2, n_vertices)
    assert load_gifti_series(path, "run").shape == (2, n_vertices)
    expected_vertices(space, path, n_vertices)
    with pytest.raises(BrainpipeInputError, match="fsaverage5 has 10242 per hemisphere"):
        expected_vertices("fsaverage5", path, n_vertices)
    with pytest.raises(BrainpipeInputError, match=r"source.rois.V1.file.*for surface spaces"):
        fmriprep.FmriprepOptions.from_config(
            {"space": "T1w", "rois": {"V1": {"file": {"L": "a", "R": "b"}}}}, "x"
        )
