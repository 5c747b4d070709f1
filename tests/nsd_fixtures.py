"""Tiny NSD time series and fsaverage betas in the bucket's real key layout and formats.

Both writers add to a tree made by :func:`tests.s3_server.write_nsd_tree` (the
expdesign .mat, stimulus HDF5, brain mask and ROI volumes) and return the
ground truth they generated.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brainpipe.design import trial_regressors
from brainpipe.hrf import canonical_hrf

TS_TR = 4.0 / 3.0  # func1pt8mm after NSD's upsampling
VOLUMES_PER_TRIAL = 3  # a trial every 4 s


def write_nsd_timeseries(
    root, nsd_truth: dict, subject: str = "01", session: str = "01",
    runs=("01", "02"), n_images=(8, 16), repeats: int = 3, blanks_per_run: int = 4,
    noise_sd: float = 0.4, seed: int = 1, space: str = "func1pt8mm",
) -> dict:  # fmt: skip
    """Write ``timeseries_sessionSS_runRR.nii.gz`` and ``design_sessionSS_runRR.tsv``.

    ``n_images[0]`` shared and ``n_images[1]`` other images of the subject, each
    shown ``repeats`` times in random order over the runs, a trial every 3
    volumes (4 s), with a few blank slots. BOLD = baseline × (1 + signal/100),
    signal = Σ trial amplitude × (3-s boxcar ⊛ canonical HRF, peak 1) + white
    noise + noise shared across voxels (3 time courses) + a slow drift; only
    the voxels of ``nsdgeneral`` respond. Stored as int16 like NSD's time series. The last
    run's header says TR 1.0 s (wrong on purpose: the fetch must fix it).

    Returns
    -------
    dict with ``amplitude`` (n_trials, n_voxels) in % signal change, trial
    order = runs in order, onsets ascending (0 outside ``responsive``);
    ``stimulus`` (n_trials,) 0-based 73k ids; ``onset`` (n_trials,) seconds;
    ``run`` (n_trials,); ``mask``; ``responsive`` (n_voxels,) bool; ``shown``
    (0-based ids); ``shared`` (shown ids among NSD's shared 1000).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    subj = f"subj{int(subject):02d}"
    mask_img = nib.load(root / f"nsddata/ppdata/{subj}/{space}/brainmask.nii.gz")
    mask = np.asarray(mask_img.dataobj) > 0
    n_vox = int(mask.sum())
    shared = np.asarray(nsd_truth["shared"])
    own = np.setdiff1d(np.unique(nsd_truth["subjectim"][int(subject) - 1]), shared)
    shown = np.concatenate(
        [
            rng.choice(shared, n_images[0], replace=False),
            rng.choice(own, n_images[1], replace=False),
        ]
    )
    order = rng.permutation(np.repeat(shown, repeats))
    per_run = np.array_split(order, len(runs))
    # Voxels of nsdgeneral respond (per image, per voxel, % change); the rest do not, as
    # in a brain, so GLMdenoise has a noise pool.
    responsive = nsd_truth["rois"][subject]["nsdgeneral"][mask] == 1
    response = rng.normal(1.5, 1.0, (len(shown), n_vox)) * responsive
    image_row = {int(i): n for n, i in enumerate(shown)}
    baseline = rng.uniform(800, 1200, n_vox)
    kernel = canonical_hrf(0.1)
    base = root / f"nsddata_timeseries/ppdata/{subj}/{space}"
    (base / "timeseries").mkdir(parents=True, exist_ok=True)
    (base / "design").mkdir(parents=True, exist_ok=True)
    amplitude, stimulus, onset, run_of = [], [], [], []
    for n, (run, ids) in enumerate(zip(runs, per_run, strict=True)):
        slots = np.full(len(ids) + blanks_per_run, -1)
        slots[np.sort(rng.choice(len(slots), len(ids), replace=False))] = ids
        n_volumes = VOLUMES_PER_TRIAL * (len(slots) + 1) + 12  # one blank slot first, HRF tail
        design = np.zeros(n_volumes, dtype=np.int64)
        volumes = VOLUMES_PER_TRIAL * (1 + np.flatnonzero(slots >= 0))
        design[volumes] = ids + 1  # 1-based 73k ids
        amp = np.stack([response[image_row[int(i)]] for i in ids])
        amp += rng.normal(0, 0.2, amp.shape) * responsive  # trial-to-trial variability
        x = trial_regressors(volumes * TS_TR, np.full(len(ids), 3.0), n_volumes, TS_TR, kernel)
        t = np.arange(n_volumes)[:, None]
        drift = 0.5 * np.cos(np.pi * t / n_volumes) * rng.normal(1, 0.2, n_vox)
        shared_noise = rng.normal(0, 1, (n_volumes, 3)) @ rng.normal(0, 0.4, (3, n_vox))
        signal = x @ amp + drift + shared_noise + rng.normal(0, noise_sd, (n_volumes, n_vox))
        bold = np.zeros((*mask.shape, n_volumes), dtype=np.int16)
        bold[mask] = np.round(baseline * (1 + signal / 100)).T.astype(np.int16)
        img = nib.Nifti1Image(bold, mask_img.affine)
        img.header.set_data_dtype(np.int16)
        img.header.set_zooms((1.8, 1.8, 1.8, 1.0 if n == len(runs) - 1 else TS_TR))
        img.header.set_xyzt_units(xyz="mm", t="sec")
        stem = f"session{int(session):02d}_run{int(run):02d}"
        nib.save(img, base / "timeseries" / f"timeseries_{stem}.nii.gz")
        np.savetxt(base / "design" / f"design_{stem}.tsv", design, fmt="%d")
        amplitude.append(amp)
        stimulus.append(ids)
        onset.append(volumes * TS_TR)
        run_of.append(np.full(len(ids), run))
    return {
        "amplitude": np.concatenate(amplitude),
        "stimulus": np.concatenate(stimulus),
        "onset": np.concatenate(onset),
        "run": np.concatenate(run_of),
        "mask": mask,
        "responsive": responsive,
        "shown": np.sort(shown),
        "shared": np.sort(np.intersect1d(shown, shared)),
    }


def _save_mgh(data: np.ndarray, path: Path, dtype=np.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.MGHImage(data.astype(dtype), np.eye(4))
    img.header.set_data_dtype(dtype)
    nib.save(img, path)


def write_nsd_surface(
    root, subject: str = "01", sessions=("01", "02"), n_vertices=(40, 33),
    version: str = "betas_fithrf_GLMdenoise_RR", seed: int = 2,
) -> dict:  # fmt: skip
    """Write fsaverage betas, ncsnr and ROI labels in NSD's layout.

    Betas ``{hemi}.betas_sessionNN.mgh`` of shape (n_vertices, 1, 1, 750): the
    first session float32 in % signal change (NSD's fsaverage format), later
    sessions int16 × 300 (the volume convention, to exercise that branch).
    ``{hemi}.ncsnr.mgh`` float32; ``nsdgeneral`` and ``prf-visualrois`` labels
    on fsaverage (``.mgz``, int32; floc-* deliberately absent), plus a decoy
    native-surface label with another vertex count under ``subjNN/label``.

    Returns
    -------
    dict with ``betas[(session, hemi)]`` (750, n) float32 in % signal change,
    ``ncsnr[hemi]``, ``labels[(roi_file, hemi)]``, ``n_vertices``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    subj = f"subj{int(subject):02d}"
    bdir = root / f"nsddata_betas/ppdata/{subj}/fsaverage/{version}"
    ldir = root / "nsddata/freesurfer/fsaverage/label"
    truth: dict = {"betas": {}, "ncsnr": {}, "labels": {}, "n_vertices": {}}
    for hemi, n in zip(("lh", "rh"), n_vertices, strict=True):
        truth["n_vertices"][hemi] = n
        ncsnr = rng.uniform(0, 1, n).astype(np.float32)
        _save_mgh(ncsnr.reshape(n, 1, 1), bdir / f"{hemi}.ncsnr.mgh")
        truth["ncsnr"][hemi] = ncsnr
        general = (np.arange(n) % 3 != 0).astype(np.int32)
        visual = rng.integers(0, 8, n).astype(np.int32)
        for name, lab in (("nsdgeneral", general), ("prf-visualrois", visual)):
            _save_mgh(lab.reshape(n, 1, 1), ldir / f"{hemi}.{name}.mgz", np.int32)
            truth["labels"][(name, hemi)] = lab
        native = root / f"nsddata/freesurfer/{subj}/label/{hemi}.prf-visualrois.mgz"
        _save_mgh(np.zeros((n + 7, 1, 1)), native, np.int32)
        for k, ses in enumerate(sessions):
            psc = rng.normal(0, 2, (n, 750)).astype(np.float32)
            path = bdir / f"{hemi}.betas_session{int(ses):02d}.mgh"
            if k == 0:
                _save_mgh(psc.reshape(n, 1, 1, 750), path)
            else:
                ints = np.round(psc * 300).astype(np.int16)
                _save_mgh(ints.reshape(n, 1, 1, 750), path, np.int16)
                psc = ints.astype(np.float32) / 300
            truth["betas"][(ses, hemi)] = psc.T
    return truth
