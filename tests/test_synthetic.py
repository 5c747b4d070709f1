"""Tests of the synthetic NSD-like dataset generator (brainpipe.datasets.synthetic)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from PIL import Image

from brainpipe.datasets import synthetic as S
from brainpipe.datasets import synthetic_stimuli
from brainpipe.design import trial_regressors
from brainpipe.errors import BrainpipeInputError
from brainpipe.hrf import hrf_library, hrf_library_parameters

SMALL = S.SyntheticParams(
    seed=0,
    n_subjects=2,
    n_sessions=1,
    n_runs=2,
    trials_per_run=20,
    voxel_size_mm=8.0,
    n_shared=6,
    image_size=32,
)
NOISE_FREE = dict(noise_sd=0.0, drift_sd=0.0, structured_noise_sd=0.0, trial_noise_sd=0.0)


def _generate(factory: pytest.TempPathFactory, name: str, params: S.SyntheticParams) -> Path:
    root = factory.mktemp(name)
    S.generate(root, params)
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory, "small", SMALL)


@pytest.fixture(scope="module")
def small_again(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory, "small_again", SMALL)


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory, "other_seed", replace(SMALL, seed=1))


# More trials, so that there are enough distinct stimuli for the ROI-tuning regressions.
NOISE_FREE_PARAMS = replace(SMALL, trials_per_run=60, **NOISE_FREE)


@pytest.fixture(scope="module")
def noise_free(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory, "noise_free", NOISE_FREE_PARAMS)


AR_PARAMS = replace(SMALL, seed=3, **{**NOISE_FREE, "noise_sd": 1.5})


@pytest.fixture(scope="module")
def ar_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory, "ar_only", AR_PARAMS)


def _runs(params: S.SyntheticParams):
    for sub in S.subject_ids(params):
        for ses in range(1, params.n_sessions + 1):
            for run in range(1, params.n_runs + 1):
                stem = f"sub-{sub}_ses-{ses:02d}_task-images_run-{run:02d}"
                yield sub, ses, run, Path(f"sub-{sub}") / f"ses-{ses:02d}" / "func" / stem


def _mask(root: Path, sub: str) -> nib.Nifti1Image:
    return nib.load(root / f"sub-{sub}" / "anat" / f"sub-{sub}_space-synth_desc-brain_mask.nii.gz")


def _residuals(root: Path, params: S.SyntheticParams) -> list[np.ndarray]:
    """BOLD in % signal change minus sum(amplitude x design with each voxel's true HRF)."""
    kernels = hrf_library(0.1, params.n_hrfs)
    out = []
    for sub, ses, run, stem in _runs(params):
        gt = S.load_ground_truth(root, sub)
        mask = _mask(root, sub).get_fdata() > 0
        bold = nib.load(root / f"{stem}_bold.nii.gz").get_fdata(dtype=np.float32)
        psc = (bold[mask].astype(np.float64) / gt.baseline.values[:, None] - 1.0) * 100.0
        events = pd.read_csv(root / f"{stem}_events.tsv", sep="\t")
        sel = (gt.session.values == ses) & (gt.run.values == run)
        np.testing.assert_array_equal(gt.onset.values[sel], events.onset.to_numpy())
        amp = gt.amplitude.values[sel].astype(np.float64)
        model = np.empty_like(psc)
        for h in np.unique(gt.hrf_index.values):
            vox = gt.hrf_index.values == h
            X = trial_regressors(
                events.onset.to_numpy(),
                events.duration.to_numpy(),
                psc.shape[1],
                params.tr,
                kernels[h],
            )
            model[vox] = (X @ amp[:, vox]).T
        out.append(psc - model)
    return out


# --------------------------------------------------------------------------- params


def test_from_config_rejects_unknown_key_and_bad_values() -> None:
    params = S.SyntheticParams.from_config({"seed": 5, "n_subjects": 3, "tr": 2})
    assert params.seed == 5 and params.n_subjects == 3 and params.tr == 2.0
    assert S.SyntheticParams.from_config(None) == S.SyntheticParams()
    with pytest.raises(BrainpipeInputError, match="n_subject"):
        S.SyntheticParams.from_config({"n_subject": 3})
    with pytest.raises(BrainpipeInputError, match="ar1"):
        S.SyntheticParams.from_config({"ar1": 1.0})
    with pytest.raises(BrainpipeInputError, match="n_shared"):
        S.SyntheticParams(n_shared=1000)
    with pytest.raises(BrainpipeInputError, match="n_runs"):
        S.SyntheticParams(n_runs=2.5)
    assert S.subject_ids(SMALL) == ["01", "02"]


def test_default_grid_rois_large_enough() -> None:
    params = S.SyntheticParams()
    template, affine = S._template_grid(params.voxel_size_mm)
    counts = []
    for s in range(params.n_subjects):
        rng = S._rng(params, S._TAG_ANAT, s)
        mask = S._subject_mask(template, rng)
        rois = S._subject_rois(mask, affine, rng, params.voxel_size_mm)
        counts.append(int(mask.sum()))
        for name in S.ROI_NAMES:
            assert (rois == name).sum() >= 20
    assert all(2000 <= c <= 15000 for c in counts)
    assert len(set(counts)) == params.n_subjects


# --------------------------------------------------------------------------- layout


def test_layout_and_shapes(small: Path) -> None:
    desc = json.loads((small / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and "BIDSVersion" in desc
    assert (
        desc["GeneratedBy"][0]["Name"] == "brainpipe"
        and "seed=0" in desc["GeneratedBy"][0]["Description"]
    )
    participants = pd.read_csv(small / "participants.tsv", sep="\t")
    assert participants.participant_id.tolist() == ["sub-01", "sub-02"]

    stimuli = pd.read_csv(small / "stimuli" / "stimuli.tsv", sep="\t")
    assert stimuli.columns.tolist() == [
        "stimulus",
        "image",
        "caption",
        "shared",
        "category",
        "superordinate",
        "colour",
        "size",
        "x",
        "y",
        "orientation",
    ]
    assert set(stimuli.shared) <= {0, 1} and stimuli.shared.sum() == SMALL.n_shared
    images = dict(zip(stimuli.stimulus, stimuli.image, strict=True))
    for row in stimuli.itertuples():
        assert row.size in row.caption and row.colour in row.caption
        assert row.category in row.caption

    lib = pd.read_csv(small / "derivatives" / "groundtruth" / "hrf_library.tsv", sep="\t")
    assert lib.hrf_index.tolist() == list(range(SMALL.n_hrfs))
    pd.testing.assert_frame_equal(
        lib.drop(columns="hrf_index"), pd.DataFrame(hrf_library_parameters(SMALL.n_hrfs))
    )
    shared = xr.open_zarr(small / "derivatives" / "groundtruth" / "shared_responses.zarr")
    assert shared.response.dims == ("stimulus", "component")
    assert shared.response.dtype == np.float32
    assert set(shared.component_block.values.tolist()) == {"lowlevel", "colour", "category"}
    assert shared.stimulus.values.tolist() == stimuli.stimulus.tolist()

    n_voxels = []
    for sub in S.subject_ids(SMALL):
        mask_img = _mask(small, sub)
        assert mask_img.get_data_dtype() == np.uint8
        mask = np.asarray(mask_img.dataobj)
        assert set(np.unique(mask).tolist()) == {0, 1}
        n_voxels.append(int(mask.sum()))
        rois = []
        for name in S.ROI_NAMES:
            path = (
                small
                / "derivatives"
                / "rois"
                / f"sub-{sub}"
                / f"sub-{sub}_space-synth_roi-{name}_mask.nii.gz"
            )
            roi_img = nib.load(path)
            assert roi_img.get_data_dtype() == np.uint8
            np.testing.assert_array_equal(roi_img.affine, mask_img.affine)
            rois.append(np.asarray(roi_img.dataobj) > 0)
            assert rois[-1].sum() > 0 and not (rois[-1] & (mask == 0)).any()
        assert (np.sum(rois, axis=0) <= 1).all()  # non-overlapping
        gt = S.load_ground_truth(small, sub)
        np.testing.assert_array_equal(
            np.stack([gt.i.values, gt.j.values, gt.k.values], axis=1), np.argwhere(mask > 0)
        )
        np.testing.assert_array_equal(np.asarray(gt.attrs["affine"]), mask_img.affine)
        assert tuple(gt.attrs["volume_shape"]) == mask.shape and gt.attrs["seed"] == 0
        for name, roi in zip(S.ROI_NAMES, rois, strict=True):
            assert (gt.roi.values == name).sum() == roi.sum()
    assert n_voxels[0] != n_voxels[1]

    for sub, _ses, _run, stem in _runs(SMALL):
        img = nib.load(small / f"{stem}_bold.nii.gz")
        mask_img = _mask(small, sub)
        assert img.ndim == 4 and img.shape[:3] == mask_img.shape
        assert img.get_data_dtype() == np.float32
        np.testing.assert_array_equal(img.affine, mask_img.affine)
        sidecar = json.loads((small / f"{stem}_bold.json").read_text())
        assert sidecar == {"RepetitionTime": SMALL.tr, "TaskName": "images"}
        events = pd.read_csv(small / f"{stem}_events.tsv", sep="\t")
        assert events.columns.tolist() == ["onset", "duration", "trial_type", "stimulus"]
        assert len(events) == SMALL.trials_per_run
        assert (events.trial_type == "image").all() and (events.duration == 3.0).all()
        assert np.all(np.diff(events.onset) >= 4.0 - 1e-9)
        assert img.shape[3] * SMALL.tr >= events.onset.max() + 3.0 + 12.0
        off_grid = np.abs(events.onset / SMALL.tr - np.round(events.onset / SMALL.tr)) > 0.01
        assert off_grid.mean() > 0.3
        for stim in events.stimulus:
            path = small / "stimuli" / images[stim]
            with Image.open(path) as im:
                assert im.mode == "RGB" and im.size == (SMALL.image_size, SMALL.image_size)


def test_trials_shared_and_unique(small: Path) -> None:
    stimuli = pd.read_csv(small / "stimuli" / "stimuli.tsv", sep="\t")
    shared = set(stimuli.stimulus[stimuli.shared == 1])
    unique_sets = []
    for sub in S.subject_ids(SMALL):
        gt = S.load_ground_truth(small, sub)
        trials = gt[["session", "run", "onset"]].to_dataframe()
        assert trials.equals(trials.sort_values(["session", "run", "onset"]))
        counts = pd.Series(gt.stimulus.values).value_counts()
        assert len(gt.trial) == SMALL.n_sessions * SMALL.n_runs * SMALL.trials_per_run
        assert all(counts[s] == SMALL.max_repeats for s in shared)
        unique = set(counts.index) - shared
        assert counts[list(unique)].between(1, SMALL.max_repeats).all()
        unique_sets.append(unique)
        events = pd.concat(
            pd.read_csv(small / f"{stem}_events.tsv", sep="\t")
            for s, _, _, stem in _runs(SMALL)
            if s == sub
        )
        assert events.stimulus.tolist() == gt.stimulus.values.tolist()
        nc = gt.noise_ceiling.values
        ncsnr = gt.ncsnr.values
        np.testing.assert_allclose(nc, 100 * ncsnr**2 / (ncsnr**2 + 1), rtol=1e-5)
        in_roi = gt.roi.values != "none"
        assert (ncsnr[~in_roi] == 0).all() and (ncsnr[in_roi] > 0.3).all()
        assert (gt.ncsnr_amplitude.values[in_roi] > ncsnr[in_roi]).all()
        assert gt.amplitude.dtype == np.float32 and gt.hrf_index.dtype == np.int16
        sd = gt.stimulus_response.values[:, in_roi].std(axis=0)
        assert np.median(sd) == pytest.approx(SMALL.signal_sd, rel=0.3)
    assert not unique_sets[0] & unique_sets[1]
    assert unique_sets[0] | unique_sets[1] | shared == set(stimuli.stimulus)


# --------------------------------------------------------------------------- determinism


def _all_arrays(root: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for path in sorted(root.rglob("*.nii.gz")):
        out[str(path.relative_to(root))] = np.asarray(nib.load(path).dataobj)
    for path in sorted((root / "stimuli" / "images").glob("*.png")):
        out[str(path.relative_to(root))] = np.asarray(Image.open(path))
    for path in sorted(root.rglob("*.tsv")):
        out[str(path.relative_to(root))] = np.array(path.read_text())
    for sub in S.subject_ids(SMALL):
        gt = S.load_ground_truth(root, sub)
        for name, var in gt.variables.items():
            out[f"gt/{sub}/{name}"] = var.values
    return out


def test_determinism(small: Path, small_again: Path, other_seed: Path) -> None:
    a, b = _all_arrays(small), _all_arrays(small_again)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    c = _all_arrays(other_seed)
    bold = "sub-01/ses-01/func/sub-01_ses-01_task-images_run-01_bold.nii.gz"
    assert a[bold].shape != c[bold].shape or not np.array_equal(a[bold], c[bold])
    assert not np.array_equal(a["stimuli/images/stim-0001.png"], c["stimuli/images/stim-0001.png"])
    assert not np.array_equal(a["gt/01/amplitude"], c["gt/01/amplitude"])


# --------------------------------------------------------------------------- ground truth vs BOLD


def test_noise_free_bold_equals_amplitude_times_design(noise_free: Path) -> None:
    for resid in _residuals(noise_free, NOISE_FREE_PARAMS):
        assert np.abs(resid).max() < 1e-4
    for sub in S.subject_ids(NOISE_FREE_PARAMS):
        gt = S.load_ground_truth(noise_free, sub)
        np.testing.assert_array_equal(gt.amplitude.values, gt.stimulus_response.values)
        assert ((gt.baseline.values >= 500) & (gt.baseline.values <= 1500)).all()
        # Outside the brain: a noise-free positive constant.
        mask = _mask(noise_free, sub).get_fdata() > 0
        stem = next(st for s, _, _, st in _runs(NOISE_FREE_PARAMS) if s == sub)
        bold = nib.load(noise_free / f"{stem}_bold.nii.gz").get_fdata()
        assert np.all(bold[~mask] == 1.0)


def test_noise_level_matches_config(ar_only: Path, small: Path) -> None:
    resid = np.concatenate([r.ravel() for r in _residuals(ar_only, AR_PARAMS)])
    assert resid.std() == pytest.approx(AR_PARAMS.noise_sd, rel=0.05)
    # All noise sources: variances add up (AR(1) + drift + structured).
    resid = np.concatenate([r.ravel() for r in _residuals(small, SMALL)])
    expected = np.sqrt(SMALL.noise_sd**2 + SMALL.drift_sd**2 + SMALL.structured_noise_sd**2)
    assert resid.std() == pytest.approx(expected, rel=0.15)


def _r2(y: np.ndarray, X: np.ndarray) -> np.ndarray:
    X1 = np.column_stack([X, np.ones(len(X))])
    beta, *_ = np.linalg.lstsq(X1, y, rcond=None)
    resid = y - X1 @ beta
    return 1.0 - resid.var(axis=0) / y.var(axis=0)


def test_roi_tuning(noise_free: Path) -> None:
    shared = xr.open_zarr(noise_free / "derivatives" / "groundtruth" / "shared_responses.zarr")
    for sub in S.subject_ids(NOISE_FREE_PARAMS):
        gt = S.load_ground_truth(noise_free, sub)
        _, first = np.unique(gt.stimulus.values, return_index=True)
        per_stim = gt.isel(trial=first)
        resp = shared.response.sel(stimulus=per_stim.stimulus.values)
        block = resp.component_block.values
        assert len(first) > 40
        r2 = {}
        for roi in S.ROI_NAMES:
            y = per_stim.stimulus_response.values[:, gt.roi.values == roi].astype(np.float64)
            r2[roi] = {
                name: float(np.median(_r2(y, resp.values[:, block == name])))
                for name in ("lowlevel", "colour", "category")
            }
        assert r2["V1"]["lowlevel"] > 0.999 and r2["V1"]["category"] < 0.6
        assert r2["LOC"]["category"] > 0.8 and r2["LOC"]["lowlevel"] < r2["LOC"]["category"] - 0.3
        assert r2["V4"]["colour"] > r2["V1"]["colour"] + 0.2
        outside = gt.stimulus_response.values[:, gt.roi.values == "none"]
        assert np.all(outside == 0)
        # V1 loads on low-level components only; LOC on none of them.
        mapping = gt.mapping
        v1 = mapping.sel(voxel=gt.roi.values == "V1")
        loc = mapping.sel(voxel=gt.roi.values == "LOC")
        assert np.all(v1.values[block != "lowlevel"] == 0)
        assert np.all(loc.values[block == "lowlevel"] == 0)


def _template_tuning_r(root: Path, params: S.SyntheticParams) -> float:
    """Correlation of two subjects' tuning weights at the same template voxels (per ROI,
    the components it loads on, pooled)."""
    a, b = (S.load_ground_truth(root, s) for s in S.subject_ids(params)[:2])
    keys = [pd.MultiIndex.from_arrays([g[c].values for c in "ijk"]) for g in (a, b)]
    common = keys[0].intersection(keys[1])
    ia, ib = keys[0].get_indexer(common), keys[1].get_indexer(common)
    pairs = []
    for roi in S.ROI_NAMES:
        both = (a.roi.values[ia] == roi) & (b.roi.values[ib] == roi)
        assert both.sum() >= 10
        ma, mb = a.mapping.values[:, ia[both]], b.mapping.values[:, ib[both]]
        loads = ma.any(axis=1)  # the components the ROI loads on
        pairs.append([m[loads].ravel() for m in (ma, mb)])
    x, y = (np.concatenate(v) for v in zip(*pairs, strict=True))
    assert len(x) > 300
    return float(np.corrcoef(x, y)[0, 1])


def test_subjects_can_share_a_template_space_topography(
    small: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With ``tuning_shared`` (0.8, the default) voxels at the same template position are
    tuned alike across subjects (a shared topography plus each subject's own deviation),
    so anatomical alignment has something to align; at 0 subjects' maps are unrelated.
    Measured: 0.26 at 0.8 (0.34 with seed 1), -0.07 at 0 (0.06 with seed 1)."""
    assert SMALL.tuning_shared == 0.8 and SMALL.caption_place == 1  # the defaults
    assert 0.15 < _template_tuning_r(small, SMALL) < 0.6  # shared, yet each subject its own
    params = replace(SMALL, tuning_shared=0.0)
    unrelated = _generate(tmp_path_factory, "unrelated_topography", params)
    assert abs(_template_tuning_r(unrelated, params)) < 0.1


def test_stimuli_are_deterministic_and_captions_skip_position() -> None:
    f1, im1, c1 = synthetic_stimuli.make_stimulus(3, 7, 48)
    f2, im2, c2 = synthetic_stimuli.make_stimulus(3, 7, 48)
    assert f1 == f2 and c1 == c2 and np.array_equal(im1, im2)
    assert im1.shape == (48, 48, 3) and im1.dtype == np.uint8
    for word in ("left", "right", "top", "bottom", "centre", "center"):
        assert word not in c1
    # caption_place: NSD-sized (1,000 test candidates), captions name the place too and
    # take thousands of values (432 without: top-1 among 1,000 could not pass ~0.1)
    f3, im3, c3 = synthetic_stimuli.make_stimulus(3, 7, 48, place=True)
    assert f3 == f1 and np.array_equal(im3, im1) and c3.startswith(c1.split(",")[0])
    assert synthetic_stimuli.place_for(f1) in c3
    for place in (False, True):
        captions = [synthetic_stimuli.make_stimulus(0, i, 16, place)[2] for i in range(1, 1001)]
        counts = pd.Series(captions).value_counts()
        if place:
            assert len(counts) > 800 and (counts == 1).mean() > 0.7, len(counts)
        else:
            assert len(counts) <= 432
    energy = synthetic_stimuli.edge_energy(im1)
    assert energy.shape == (64,) and np.all(energy >= 0)


def test_prf_tuning_is_spatially_local(
    noise_free: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With ``response_prf`` each V1/V4 voxel responds to the image inside its own
    population receptive field: retinotopic centres (each hemisphere the opposite half of
    the image), V4's pRFs larger than V1's, the tuning weights confined to the pRF, and the
    responses no longer explained by the image's globally pooled channels. The colour and
    category blocks are those of the pooled world."""
    from brainpipe.datasets import synthetic_prf

    params = replace(NOISE_FREE_PARAMS, response_prf=0.1)
    root = _generate(tmp_path_factory, "prf", params)
    gt_dir = Path("derivatives") / "groundtruth" / "shared_responses.zarr"
    shared = xr.open_zarr(root / gt_dir).load()
    pooled_world = xr.open_zarr(noise_free / gt_dir).load()
    block = shared.component_block.values
    for name in ("colour", "category"):
        np.testing.assert_array_equal(
            shared.response.values[:, block == name],
            pooled_world.response.values[:, pooled_world.component_block.values == name],
        )
    n_ch = synthetic_prf.N_CHANNELS
    low = shared.response.values[:, block == "lowlevel"]
    side = int(round(np.sqrt(low.shape[1] / n_ch)))
    assert side * side * n_ch == low.shape[1] == 8 * 8 * 4  # the image map without a network
    centres = (np.arange(side) + 0.5) / side
    py, px = (a.ravel() for a in np.meshgrid(centres, centres, indexing="ij"))
    global_channels = low.reshape(len(low), side * side, n_ch).mean(axis=1)
    for sub in S.subject_ids(params):
        gt = S.load_ground_truth(root, sub)
        roi = gt.roi.values
        has = np.isfinite(gt.prf_size.values)
        np.testing.assert_array_equal(has, np.isin(roi, ["V1", "V4"]))
        for hemi, half in ((gt.x.values > 0, gt.prf_x.values < 0.5), (gt.x.values < 0, None)):
            v1 = (roi == "V1") & hemi
            assert v1.sum() >= 5
            if half is not None:  # the right hemisphere sees the left half
                assert half[v1].all()
            else:
                assert (gt.prf_x.values[v1] > 0.5).all()
        size = {r: np.median(gt.prf_size.values[roi == r]) for r in ("V1", "V4")}
        assert 1.6 < size["V4"] / size["V1"] < 2.5, size
        # each V1 voxel's weights sit inside its pRF: > 95 % of their mass within 3 sd (98.9 %
        # for a continuous 2-D Gaussian)
        m = np.abs(gt.mapping.values[block == "lowlevel"][:, roi == "V1"])
        mass = m.reshape(side * side, n_ch, -1).sum(axis=1)
        dist = np.hypot(
            px[:, None] - gt.prf_x.values[roi == "V1"], py[:, None] - gt.prf_y.values[roi == "V1"]
        )
        inside = (mass * (dist <= 3 * gt.prf_size.values[roi == "V1"])).sum(0) / mass.sum(0)
        assert np.median(inside) > 0.95, np.median(inside)
        # responses: the 4 channels pooled over the voxel's own pRF explain them exactly,
        # the same channels pooled over the whole image far less (the background's grey level is
        # global: measured median 0.59 and 0.62)
        _, first = np.unique(gt.stimulus.values, return_index=True)
        rows = [list(shared.stimulus.values).index(s) for s in gt.stimulus.values[first]]
        y = gt.stimulus_response.values[first][:, roi == "V1"].astype(np.float64)
        prfs = {
            k: gt[k].values[roi == "V1"].astype(np.float64) for k in ("prf_x", "prf_y", "prf_size")
        }
        g = synthetic_prf.prf_weights(prfs, np.column_stack([px, py]))
        maps = low[rows].reshape(len(rows), side * side, n_ch)
        own = [_r2(y[:, [v]], maps.transpose(0, 2, 1) @ g[:, v])[0] for v in range(y.shape[1])]
        assert np.median(own) > 0.999, np.median(own)
        assert np.median(_r2(y, global_channels[rows])) < 0.75, _r2(y, global_channels[rows])
