"""A tiny NSD written the way NSD's own export code writes it, field by field.

Every file below mirrors a published file of ``s3://natural-scenes-dataset``; the
comment next to each field names the published source that fixes its layout:

- [export] cvnlab/nsddatapaper ``main/export.m`` (betas HDF5/NIfTI, valid, time
  series, design tsv, resting-state runs);
- [noise] cvnlab/nsddatapaper ``main/export_noiseceiling.m`` (sessions per subject,
  invalid voxels all 0, ncsnr on betas z-scored per session);
- [setup] cvnlab/nsddatapaper ``main/nsdsetup.m`` (which sessions have resting state);
- [nsda] tknapen/nsd_access ``nsd_access/nsda.py`` (how readers index ``/betas``, the
  ``nsd_stim_info_merged.csv`` columns ``cocoId``/``cocoSplit``, COCO 2017 caption files);
- [algo] gifale95/algonauts_2023 ``code/01_challenge_data_preparation/`` (fsaverage
  betas ``{hemi}.betas_sessionNN.mgh`` as (vertices, 1, 1, 750), NaN vertices in
  subjects 06 and 08);
- [coco] the COCO 2017 ``captions_{train,val}2017.json`` format (``images``,
  ``annotations`` with ``image_id`` and ``caption``).

Sizes are tiny (a few hundred voxels, a few hundred images); formats, dtypes, axis
orders, chunking and key names are the published ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io

from brainpipe.design import trial_regressors
from brainpipe.hrf import canonical_hrf

#: [noise] ``nsess = [40 40 32 30 40 32 40 30]``.
SESSIONS_PER_SUBJECT = (40, 40, 32, 30, 40, 32, 40, 30)
#: [export] ``assert(length(a1.stimulus)==12)``: 12 task runs per session; runs alternate
#: 63 and 62 stimulus trials (750 per session), in 75 trial slots of 4 s each.
TASK_RUNS = 12
TRIALS_PER_RUN = (63, 62) * 6
SLOTS_PER_RUN = 75
#: [export] ``tr = [1 4/3]`` (func1mm, func1pt8mm); volumes per 4-s trial slot.
SPACE_TR = {"func1mm": 1.0, "func1pt8mm": 4.0 / 3.0}
VOLUMES_PER_SLOT = {"func1mm": 4, "func1pt8mm": 3}


def rest_session(subject: int, session: int) -> bool:
    """[setup] ``nsdsessnumfun(p) >= 21 && <= 30 || (subject in [1 5] && session in 31:38)``."""
    return 21 <= session <= 30 or (subject in (1, 5) and 31 <= session <= 38)


def stimpattern(rng: np.random.Generator, n_sessions: int = 40) -> np.ndarray:
    """[export] ``stimpattern`` (40 sessions × 12 runs × 75 slots), 1 where a trial starts.

    The first slot of each run is blank (runs start with a blank trial), the other
    blank slots fall at random, as the published design tsv files show.
    """
    pattern = np.zeros((n_sessions, TASK_RUNS, SLOTS_PER_RUN), dtype=np.uint8)
    for s in range(n_sessions):
        for r, n in enumerate(TRIALS_PER_RUN):
            slots = 1 + rng.choice(SLOTS_PER_RUN - 1, n, replace=False)
            pattern[s, r, slots] = 1
    return pattern


def write_nsd_tree(
    root,
    subjects=("01",),
    sessions=("01", "02"),
    shape=(6, 7, 5),
    n_images=300,
    n_shared=30,
    image_size=8,
    seed=0,
    space="func1pt8mm",
    version="betas_fithrf_GLMdenoise_RR",
    betas_layout="published",
    invalid_per_session=3,
    captions=True,
) -> dict:
    """Write a tiny NSD under ``root`` in the bucket's key layout; return the ground truth.

    ``betas_layout``: ``"published"`` (NSD's: chunks ``(750, 1, 1, 1)``, unfiltered),
    ``"contiguous"``, ``"trial-chunks"`` (one trial per chunk) or ``"deflate"`` (one voxel
    per chunk, gzip): the last three are not NSD's, for the readers' other paths.
    ``invalid_per_session`` brain voxels of each session are marked invalid
    (``valid_sessionNN`` 0, betas all 0). With ``captions``, COCO-format caption
    files go under ``root/coco/annotations/`` (outside the NSD keys, as COCO hosts them).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    exp = root / "nsddata/experiments/nsd"
    exp.mkdir(parents=True, exist_ok=True)
    shared = rng.choice(n_images, n_shared, replace=False)
    subjectim = np.empty((8, 10000), dtype=np.int64)
    others = np.setdiff1d(np.arange(n_images), shared)
    for s in range(8):
        subjectim[s] = np.concatenate([shared, rng.choice(others, 10000 - n_shared)])
    masterordering = rng.integers(0, 10000, 30000)
    for ses in sessions or ("01",):  # every shared image early in each session written
        start = (int(ses) - 1) * 750
        masterordering[start : start + n_shared] = np.arange(n_shared)
    pattern = stimpattern(rng)
    # [export] nsd_expdesign.mat: MATLAB v5, 1-based masterordering (1×30000), subjectim
    # (8×10000, 73k ids), sharedix (1×1000); stimpattern (40×12×75) -- the export's
    # sanity check ties it to the design tsv onsets.
    scipy.io.savemat(
        exp / "nsd_expdesign.mat",
        {
            "masterordering": (masterordering + 1)[None, :].astype(np.float64),
            "subjectim": (subjectim + 1).astype(np.float64),
            "sharedix": np.sort(shared + 1)[None, :].astype(np.float64),
            "stimpattern": pattern.astype(np.float64),
        },
    )
    # [nsda] nsd_stim_info_merged.csv: one row per 73k image, 0-based nsdId, with the COCO
    # image it came from (cocoId) and its COCO split (cocoSplit: train2017 / val2017).
    coco_id = rng.choice(np.arange(1, 600000), n_images, replace=False)
    coco_split = np.where(rng.random(n_images) < 0.8, "train2017", "val2017")
    info = pd.DataFrame(
        {"cocoId": coco_id, "cocoSplit": coco_split, "nsdId": np.arange(n_images),
         "shared1000": np.isin(np.arange(n_images), shared)}
    )  # fmt: skip
    info.to_csv(exp / "nsd_stim_info_merged.csv")  # pandas index as the unnamed first column
    truth_captions = {}
    if captions:
        for split in ("train2017", "val2017"):
            ids = coco_id[coco_split == split]
            images = [{"id": int(i), "file_name": f"{int(i):012d}.jpg"} for i in ids]
            annotations, n = [], 0
            for i in ids:
                for c in range(5):  # COCO has ~5 captions per image
                    n += 1
                    text = f"image {int(i)} caption {c}"
                    annotations.append({"image_id": int(i), "id": n, "caption": text})
            for nsd_id in np.flatnonzero(coco_split == split):
                truth_captions[int(nsd_id)] = f"image {int(coco_id[nsd_id])} caption 0"
            doc = {"info": {"description": "COCO 2017"}, "licenses": [], "images": images,
                   "annotations": annotations}  # fmt: skip
            path = root / f"coco/annotations/captions_{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc))
    stim = root / "nsddata_stimuli/stimuli/nsd"
    stim.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n_images, image_size, image_size, 3), dtype=np.uint8)
    with h5py.File(stim / "nsd_stimuli.hdf5", "w") as h5:
        h5.create_dataset("imgBrick", data=images, chunks=(1, image_size, image_size, 3))
    affine = np.diag([1.8, 1.8, 1.8, 1.0])
    affine[:3, 3] = -np.array(shape) * 0.9
    tr = SPACE_TR.get(space, 4.0 / 3.0)
    truth = {"images": images, "subjectim": subjectim, "masterordering": masterordering,
             "shared": shared, "stimpattern": pattern, "betas": {}, "mask": {}, "ncsnr": {},
             "rois": {}, "valid": {}, "coco_id": coco_id, "coco_split": coco_split,
             "captions": truth_captions}  # fmt: skip
    for subject in subjects:
        subj = f"subj{int(subject):02d}"
        pp = root / f"nsddata/ppdata/{subj}/{space}"
        (pp / "roi").mkdir(parents=True, exist_ok=True)
        ii, jj, kk = np.indices(shape)
        centre = (np.array(shape) - 1) / 2
        dist = ((ii - centre[0]) / shape[0]) ** 2 + ((jj - centre[1]) / shape[1]) ** 2
        dist = dist + ((kk - centre[2]) / shape[2]) ** 2
        mask = dist < 0.2
        # [export] "brain mask, int16"; ROI volumes int16, -1 outside the brain mask
        save_nifti(mask.astype(np.int16), affine, pp / "brainmask.nii.gz", tr)
        general = np.where(mask, (ii >= shape[0] // 2).astype(np.int16), -1).astype(np.int16)
        save_nifti(general, affine, pp / "roi/nsdgeneral.nii.gz", tr)
        visual = np.where(mask, rng.integers(0, 8, shape), -1).astype(np.int16)
        save_nifti(visual, affine, pp / "roi/prf-visualrois.nii.gz", tr)
        rois = {"nsdgeneral": general, "prf-visualrois": visual}
        for name in ("floc-faces", "floc-places", "floc-bodies", "floc-words"):
            rois[name] = np.where(mask, rng.integers(0, 4, shape), -1).astype(np.int16)
            save_nifti(rois[name], affine, pp / f"roi/{name}.nii.gz", tr)
        bdir = root / f"nsddata_betas/ppdata/{subj}/{space}/{version}"
        bdir.mkdir(parents=True, exist_ok=True)
        ncsnr = rng.uniform(0, 1, shape).astype(np.float32)
        save_nifti(ncsnr, affine, bdir / "ncsnr.nii.gz", tr)
        truth["mask"][subject], truth["ncsnr"][subject] = mask, ncsnr
        truth["rois"][subject] = rois
        brain = np.argwhere(mask)
        for ses in sessions:
            # [export] valid_sessionNN.nii.gz in nsddata/ppdata/subjNN/SPACE (int16 0/1)
            valid = mask.copy()
            bad = brain[rng.choice(len(brain), invalid_per_session, replace=False)]
            valid[tuple(bad.T)] = False
            save_nifti(
                valid.astype(np.int16), affine, pp / f"valid_session{int(ses):02d}.nii.gz", tr
            )
            nifti_order = rng.normal(0, 2, (*shape, 750))  # % signal change, (I, J, K, trial)
            # [export] beta0 = int16(modelmd * 300); zeroed outside the brain mask;
            # [noise] "invalid voxels are all 0"
            ints = np.round(nifti_order * 300).astype(np.int16)
            ints[~valid] = 0
            write_betas_hdf5(bdir / f"betas_session{int(ses):02d}.hdf5", ints, betas_layout)
            truth["betas"][(subject, ses)] = ints.astype(np.float32) / 300
            truth["valid"][(subject, ses)] = valid
    return truth


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, tr: float) -> None:
    """[export] ``nsd_savenifti(vol, voxsize, file, tr)``: gzipped NIfTI, TR in pixdim[4]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header["pixdim"][4] = tr
    nib.save(img, path)


def write_betas_hdf5(path: Path, nifti_order: np.ndarray, layout: str = "published") -> None:
    """One session's ``/betas`` from int16 betas in NIfTI order ``(I, J, K, 750)``.

    [export] ``h5create(file0,'/betas',size(betas),'Datatype','int16','ChunkSize',
    [1 1 1 size(betas,4)]); h5write(file0,'/betas',betas)``: MATLAB is column-major, so
    h5py sees ``(750, K, J, I)`` chunked ``(750, 1, 1, 1)``, no filter ([nsda] reads it as
    ``betas[trial_index, ...]``). ``volfun2`` and the NIfTI's ``volfun`` orient the
    first two axes the same way, so voxel (i, j, k) of the NIfTI volumes is
    ``betas[:, k, j, i]``.
    """
    data = np.ascontiguousarray(nifti_order.transpose(3, 2, 1, 0))
    kwargs: dict = {}
    if layout == "published":
        kwargs = {"chunks": (data.shape[0], 1, 1, 1)}
    elif layout == "deflate":
        kwargs = {"chunks": (data.shape[0], 1, 1, 1), "compression": "gzip"}
    elif layout == "trial-chunks":
        kwargs = {"chunks": (1, *data.shape[1:])}
    elif layout != "contiguous":
        raise ValueError(f"unknown betas layout {layout!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("betas", data=data, dtype=np.int16, **kwargs)


TS_TR = SPACE_TR["func1pt8mm"]  # func1pt8mm after NSD's upsampling


def write_nsd_timeseries(
    root, nsd_truth: dict, subject: str = "01", session: str = "01", noise_sd: float = 0.4,
    seed: int = 1, space: str = "func1pt8mm",
) -> dict:  # fmt: skip
    """Write every ``timeseries_sessionSS_runRR.nii.gz`` and ``design_sessionSS_runRR.tsv``.

    As [export] writes them: a design tsv per run with one row per volume (the 1-based
    73k id of the image whose trial starts there, else 0), trials where ``stimpattern``
    says, ``VOLUMES_PER_SLOT`` volumes per 4-s slot; in a resting-state session
    ([setup]) the runs are ``allruns([13 1:12 14])``: runs 01 and 14 are rest (all-zero
    design of the same length) and task run n is file run n+1. Each time series has
    one more volume than its design ("trailing volumes of fMRI data must be dropped in
    order to match"), int16, zero outside the brain mask, TR in the header.

    BOLD = baseline × (1 + signal/100), signal = Σ trial amplitude × (3-s boxcar ⊛
    canonical HRF) + white noise + shared noise + drift; only ``nsdgeneral`` voxels respond.

    Returns
    -------
    dict with ``amplitude`` (750, n_voxels) % signal change in trial order; ``stimulus``
    (750,) 0-based 73k ids; ``onset`` (750,) s from the start of the run; ``task_run``
    (750,) "01".."12"; ``file_run`` (750,) the run number of the files; ``rest`` (bool,
    the session has rest runs); ``mask``; ``responsive``; ``n_volumes`` per file run.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    subj = f"subj{int(subject):02d}"
    s_ix, n_ses = int(subject) - 1, int(session)
    mask_img = nib.load(root / f"nsddata/ppdata/{subj}/{space}/brainmask.nii.gz")
    mask = np.asarray(mask_img.dataobj) > 0
    n_vox = int(mask.sum())
    tr, vps = SPACE_TR[space], VOLUMES_PER_SLOT[space]
    order = nsd_truth["masterordering"][(n_ses - 1) * 750 : n_ses * 750]
    ids = nsd_truth["subjectim"][s_ix, order]  # 0-based 73k ids of the session's trials
    responsive = nsd_truth["rois"][subject]["nsdgeneral"][mask] == 1
    shown = np.unique(ids)
    response = rng.normal(1.5, 1.0, (len(shown), n_vox)) * responsive
    row_of = {int(i): n for n, i in enumerate(shown)}
    amplitude = np.stack([response[row_of[int(i)]] for i in ids])
    amplitude += rng.normal(0, 0.2, amplitude.shape) * responsive
    baseline = rng.uniform(800, 1200, n_vox)
    kernel = canonical_hrf(0.1)
    base = root / f"nsddata_timeseries/ppdata/{subj}/{space}"
    rest = rest_session(int(subject), n_ses)
    n_design = SLOTS_PER_RUN * vps
    onset, task_run, file_run, n_volumes = [], [], [], {}
    runs = [None, *range(TASK_RUNS), None] if rest else list(range(TASK_RUNS))
    t0 = 0
    for f, task in enumerate(runs, start=1):
        design = np.zeros(n_design, dtype=np.int64)
        amp = np.zeros((0, n_vox))
        volumes = np.zeros(0, dtype=np.int64)
        if task is not None:
            slots = np.flatnonzero(nsd_truth["stimpattern"][n_ses - 1, task])
            volumes = vps * slots
            n = len(slots)
            design[volumes] = ids[t0 : t0 + n] + 1  # 1-based 73k ids
            amp = amplitude[t0 : t0 + n]
            onset.append(volumes * tr)
            task_run += [f"{task + 1:02d}"] * n
            file_run += [f"{f:02d}"] * n
            t0 += n
        n_vol = n_design + 1  # one trailing volume more than the design
        x = np.zeros((n_vol, 0))
        if len(volumes):  # a rest run has no trial
            x = trial_regressors(volumes * tr, np.full(len(volumes), 3.0), n_vol, tr, kernel)
        t = np.arange(n_vol)[:, None]
        drift = 0.5 * np.cos(np.pi * t / n_vol) * rng.normal(1, 0.2, n_vox)
        shared_noise = rng.normal(0, 1, (n_vol, 3)) @ rng.normal(0, 0.4, (3, n_vox))
        signal = x @ amp + drift + shared_noise + rng.normal(0, noise_sd, (n_vol, n_vox))
        bold = np.zeros((*mask.shape, n_vol), dtype=np.int16)
        bold[mask] = np.round(baseline * (1 + signal / 100)).T.astype(np.int16)
        stem = f"session{n_ses:02d}_run{f:02d}"
        save_nifti(bold, mask_img.affine, base / "timeseries" / f"timeseries_{stem}.nii.gz", tr)
        (base / "design").mkdir(parents=True, exist_ok=True)
        # [export] dlmwrite(file0, allruns{rr}(:), 'delimiter', '\t'): one integer per row
        np.savetxt(base / "design" / f"design_{stem}.tsv", design, fmt="%d")
        n_volumes[f"{f:02d}"] = n_vol
    return {
        "amplitude": amplitude,
        "stimulus": ids,
        "onset": np.concatenate(onset),
        "task_run": np.array(task_run),
        "file_run": np.array(file_run),
        "rest": rest,
        "mask": mask,
        "responsive": responsive,
        "n_volumes": n_volumes,
    }


def _save_mgh(data: np.ndarray, path: Path, dtype=np.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.MGHImage(data.astype(dtype), np.eye(4))
    img.header.set_data_dtype(dtype)
    nib.save(img, path)


def write_nsd_surface(
    root, subject: str = "01", sessions=("01", "02"), n_vertices=(40, 33),
    version: str = "betas_fithrf_GLMdenoise_RR", seed: int = 2, nan_vertices: int = 2,
) -> dict:  # fmt: skip
    """Write fsaverage betas, ncsnr and ROI labels in NSD's layout ([algo], [noise]).

    ``nan_vertices`` vertices per hemisphere hold NaN in every trial of the first
    session ([algo]: subjects 06 and 08 have such vertices; it drops them).

    Betas ``{hemi}.betas_sessionNN.mgh`` of shape (n_vertices, 1, 1, 750): the
    first session float32 in % signal change (NSD's fsaverage format), later
    sessions int16 × 300 (the volume convention, to exercise that branch).
    ``{hemi}.ncsnr.mgh`` float32; ``nsdgeneral`` and ``prf-visualrois`` labels
    on fsaverage (``.mgz``, int32); ``floc-faces`` on the subject's native surface only
    (``subjNN/label``, more vertices) with ``transforms/{hemi}.white-to-fsaverage.mgz``;
    a decoy native ``prf-visualrois`` label that must not be used (fsaverage has one).

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
    truth: dict = {"betas": {}, "ncsnr": {}, "labels": {}, "n_vertices": {}, "nan": {}}
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
        # floc-faces exists only on the subject's native surface (n + 7 vertices here),
        # with NSD's transform: per fsaverage vertex, the 1-based native vertex
        # (cvnlab/nsdcode nsd_mapdata: transforms/{hemi}.white-to-fsaverage.mgz)
        n_native = n + 7
        native_faces = rng.integers(0, 6, n_native).astype(np.int32)
        label_dir = root / f"nsddata/freesurfer/{subj}/label"
        _save_mgh(native_faces.reshape(-1, 1, 1), label_dir / f"{hemi}.floc-faces.mgz", np.int32)
        nearest = rng.integers(1, n_native + 1, n)
        transform = root / f"nsddata/ppdata/{subj}/transforms/{hemi}.white-to-fsaverage.mgz"
        _save_mgh(nearest.reshape(-1, 1, 1), transform, np.int32)
        truth["labels"][("floc-faces", hemi)] = native_faces[nearest - 1]
        native = root / f"nsddata/freesurfer/{subj}/label/{hemi}.prf-visualrois.mgz"
        _save_mgh(np.zeros((n_native, 1, 1)), native, np.int32)
        for k, ses in enumerate(sessions):
            psc = rng.normal(0, 2, (n, 750)).astype(np.float32)
            path = bdir / f"{hemi}.betas_session{int(ses):02d}.mgh"
            if k == 0:
                nan = rng.choice(n, nan_vertices, replace=False)
                psc[nan] = np.nan
                truth["nan"][hemi] = np.sort(nan)
                _save_mgh(psc.reshape(n, 1, 1, 750), path)
            else:
                ints = np.round(psc * 300).astype(np.int16)
                _save_mgh(ints.reshape(n, 1, 1, 750), path, np.int16)
                psc = ints.astype(np.float32) / 300
            truth["betas"][(ses, hemi)] = psc.T
    return truth
