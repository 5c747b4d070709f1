"""BIDS + fMRIPrep fixtures shaped like BOLD5000 (ds001499) and THINGS-fMRI (ds004192).

File names and confounds columns follow what fMRIPrep writes, as documented in
"Outputs of fMRIPrep" (https://fmriprep.org/en/stable/outputs.html) and shown by the real
derivatives tree of bids-standard/bids-examples ``ds000001-fmriprep``::

    derivatives/fmriprep/dataset_description.json  (DatasetType derivative, GeneratedBy fMRIPrep)
    sub-X/ses-Y/func/<run>_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz
    <run>_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.json  (RepetitionTime, ...)
    <run>_space-MNI152NLin2009cAsym_res-2_desc-brain_mask.nii.gz, ..._boldref.nii.gz
    <run>_desc-confounds_timeseries.tsv / .json
    <run>_hemi-{L,R}_space-fsaverage5_bold.func.gii   (first run only: 10,242 vertices)

with ``<run>`` = ``sub-X_ses-Y_task-T_run-R``.

The confounds TSV has every column of the fMRIPrep example nilearn ships
(``nilearn/interfaces/fmriprep/data/test-v21_desc-confounds_timeseries.tsv``: motion
``trans_*``/``rot_*`` with ``_derivative1``/``_power2``, ``white_matter``, ``csf``,
``global_signal``, ``framewise_displacement``, ``std_dvars``, ``a_comp_cor_*``,
``t_comp_cor_*``, ``cosine*``, ``motion_outlier*``), with values made for our runs, and
that example's JSON (CompCor metadata) beside it.

Events follow each dataset's publisher:

- BOLD5000: columns ``onset duration Subj Sess Run Trial ImgName ImgType StimOn(s)
  StimOff(s) Response RT stim_file`` (read in public code that parses ds001499's
  ``sub-CSI*_ses-*_task-5000scenes_run-*_events.tsv``, e.g. the BOLD5000 aggregation
  parser adapted from git.hcics.simtech.uni-stuttgart.de/collaboration-projects/bold5000);
  repeated images carry ``rep_`` in ``ImgName`` and ``ImgType`` (``rep_coco``, ...);
  images under ``{COCO,ImageNet,Scene}/`` as in BOLD5000's Presented_Stimuli folder.
- THINGS-fMRI: columns ``onset duration file_path trial_type`` with ``trial_type`` in
  ``exp``/``test``/``catch`` (the publishers' ViCCo-Group/THINGS-data
  ``MRI/thingsmri/betas.py`` reads ``file_path`` as the condition and ``trial_type ==
  "test"`` as the repeated test images); sessions ``things01..``, task ``things``; images
  ``{category}/{category}_NNs.jpg`` as in the THINGS image database.

The BOLD signal is made from known single-trial amplitudes (what the betas must recover)
plus motion-like confounds that are also written to the confounds file: each voxel loads
on the six motion parameters, and a few volumes carry a spike with large framewise
displacement (so scrubbing flags them).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainpipe.design import FINE_DT, trial_regressors
from brainpipe.hrf import canonical_hrf

SPACE = "MNI152NLin2009cAsym"
SHAPE = (10, 12, 10)  # a 2 mm crop of MNI space over the occipital cortex
NILEARN_CONFOUNDS = "test-v21_desc-confounds_timeseries"


@dataclass
class Truth:
    """What the fixture put in: per subject, (stimulus x voxel) amplitudes in % signal change."""

    amplitudes: dict[str, pd.DataFrame] = field(default_factory=dict)
    mask: dict[str, np.ndarray] = field(default_factory=dict)
    #: surface fixtures: (stimulus x vertex) amplitudes, vertices of both hemispheres left
    #: first (NaN on the medial wall), and the medial wall's vertices
    surface: dict[str, pd.DataFrame] = field(default_factory=dict)
    medial_wall: np.ndarray | None = None


def mni_affine() -> np.ndarray:
    """2 mm MNI affine placing the crop over visual cortex (x -10..8, y -100..-78, z 0..18)."""
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-10.0, -100.0, 0.0]
    return aff


def confound_columns() -> list[str]:
    """The columns of nilearn's shipped fMRIPrep (v21) confounds example."""
    from nilearn.interfaces.fmriprep import data

    path = Path(data.__file__).parent / f"{NILEARN_CONFOUNDS}.tsv"
    return list(pd.read_csv(path, sep="\t", nrows=0).columns)


def confounds_json() -> dict:
    from nilearn.interfaces.fmriprep import data

    return json.loads((Path(data.__file__).parent / f"{NILEARN_CONFOUNDS}.json").read_text())


def _confounds(rng: np.random.Generator, n: int, tr: float, spikes: list[int]) -> pd.DataFrame:
    """A confounds table with fMRIPrep's columns: motion random walks, spikes at ``spikes``."""
    cols = confound_columns()
    data: dict[str, np.ndarray] = {}
    for name in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"):
        scale = 0.3 if name.startswith("trans") else 0.005
        walk = np.cumsum(rng.normal(0, scale / 4, n))
        walk += scale * np.sin(2 * np.pi * np.arange(n) / rng.uniform(15, 40) + rng.uniform(0, 6))
        data[name] = walk
    fd = np.zeros(n)
    fd[1:] = sum(np.abs(np.diff(data[k])) for k in ("trans_x", "trans_y", "trans_z"))
    fd[1:] += 50 * sum(np.abs(np.diff(data[k])) for k in ("rot_x", "rot_y", "rot_z"))
    fd = np.minimum(fd, 0.3)
    fd[spikes] = 1.5
    out: dict[str, np.ndarray] = {}
    for col in cols:
        base = col.split("_derivative1")[0].split("_power2")[0]
        if base in data:
            x = data[base]
            if "_derivative1" in col:
                x = np.concatenate([[np.nan], np.diff(x)])
            if col.endswith("_power2"):
                x = x**2
            out[col] = x
        elif col == "framewise_displacement":
            out[col] = np.concatenate([[np.nan], fd[1:]])
        elif col in ("std_dvars", "dvars"):
            v = 1.0 + 0.1 * rng.standard_normal(n)
            v[spikes] = 3.0
            out[col] = np.concatenate([[np.nan], v[1:]])
        elif col.startswith("cosine"):
            k = int(col[len("cosine") :]) + 1
            out[col] = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * np.arange(n) + 1) * k / (2 * n))
        elif col.startswith(("motion_outlier", "non_steady_state_outlier")):
            continue  # one column per flagged volume, added below
        else:  # global_signal, white_matter, csf, compcor components, rmsd, ...
            x = rng.standard_normal(n).cumsum() * 0.1
            if "_derivative1" in col:
                x = np.concatenate([[np.nan], np.diff(x)])
            out[col] = x
    for i, s in enumerate(spikes):
        one = np.zeros(n)
        one[s] = 1.0
        out[f"motion_outlier{i:02d}"] = one
    return pd.DataFrame(out)


def _save_nifti(data: np.ndarray, path: Path, tr: float | None = None, dtype=np.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data.astype(dtype), mni_affine())
    if tr is not None:
        img.header.set_zooms((2.0, 2.0, 2.0, tr))
        img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)


def _save_image(path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.fromarray(pixels).save(path, format=fmt)


@dataclass
class Shape:
    """What differs between the BOLD5000- and THINGS-shaped fixtures."""

    name: str
    subjects: list[str]
    sessions: list[str]
    runs: list[str]
    task: str
    tr: float
    n_scans: int
    trial_spacing_s: float
    trial_duration_s: float
    n_unique: int  # stimuli per subject seen once
    n_shared: int  # test stimuli every subject sees in every session


BOLD5000 = Shape(
    name="bold5000", subjects=["CSI1", "CSI2"], sessions=["01", "02"], runs=["01", "02"],
    task="5000scenes", tr=2.0, n_scans=110, trial_spacing_s=10.0, trial_duration_s=1.0,
    n_unique=36, n_shared=4,
)  # fmt: skip
THINGS = Shape(
    name="things", subjects=["01", "02"], sessions=["things01", "things02"], runs=["01", "02"],
    task="things", tr=1.5, n_scans=120, trial_spacing_s=4.5, trial_duration_s=0.5,
    n_unique=60, n_shared=6,
)  # fmt: skip


def _bold5000_rows(stims: list[tuple[str, str, bool]], onsets, sub, ses, run) -> pd.DataFrame:
    """BOLD5000 events: ImgName/ImgType with ``rep_`` on repeated images."""
    rows = []
    for n, ((name, kind, rep), onset) in enumerate(zip(stims, onsets, strict=True)):
        img = f"rep_{name}" if rep else name
        rows.append(
            {
                "onset": onset, "duration": 1.0, "Subj": int(sub[-1]), "Sess": int(ses),
                "Run": int(run), "Trial": n + 1, "ImgName": img,
                "ImgType": f"rep_{kind}" if rep else kind, "StimOn(s)": onset + 0.1,
                "StimOff(s)": onset + 1.1, "Response": 1.0 if n % 3 else "n/a", "RT": 0.8,
                "stim_file": img,
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def _things_rows(stims: list[tuple[str, str, bool]], onsets) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "onset": onsets,
            "duration": 0.5,
            "file_path": [name for name, _, _ in stims],
            "trial_type": [kind for _, kind, _ in stims],
        }
    )


def _stimulus_sets(shape: Shape, rng: np.random.Generator):
    """Shared test stimuli and per-subject unique ones, each (events value, kind, repeated)."""
    if shape.name == "bold5000":
        kinds = [("coco", "COCO_train2014_{:012d}.jpg"), ("imagenet", "n0144{:04d}_10110.JPEG"),
                 ("scenes", "scene{:04d}.jpg")]  # fmt: skip
        shared = [
            (kinds[i % 3][1].format(9000 + i), kinds[i % 3][0], True) for i in range(shape.n_shared)
        ]
        uniq = {
            s: [
                (kinds[i % 3][1].format(100 * (n + 1) + i), kinds[i % 3][0], False)
                for i in range(shape.n_unique)
            ]
            for n, s in enumerate(shape.subjects)
        }  # fmt: skip
        folders = {"coco": "COCO", "imagenet": "ImageNet", "scenes": "Scene"}
        files = {
            name: Path(folders[kind]) / name
            for name, kind, _ in shared + [x for u in uniq.values() for x in u]
        }
    else:
        cats = ["aardvark", "abacus", "accordion", "acorn", "air_conditioner", "airplane",
                "alligator", "altar", "ambulance", "anchor", "ankle", "anteater"]  # fmt: skip
        shared = [(f"{cats[i]}/{cats[i]}_12s.jpg", "test", True) for i in range(shape.n_shared)]
        uniq = {
            s: [
                (f"{c}/{c}_{n * 30 + i // len(cats):02d}b.jpg", "exp", False)
                for i in range(shape.n_unique)
                for c in [cats[i % len(cats)]]
            ]
            for n, s in enumerate(shape.subjects)
        }  # fmt: skip
        files = {name: Path(name) for name, _, _ in shared + [x for u in uniq.values() for x in u]}
        files["catch/catch_01.jpg"] = Path("catch/catch_01.jpg")
    return shared, uniq, files


#: ``derivatives/fmriprep/dataset_description.json`` as fMRIPrep 23 writes it.
FMRIPREP_DESCRIPTION = {
    "Name": "fMRIPrep - fMRI PREProcessing workflow",
    "BIDSVersion": "1.4.0",
    "DatasetType": "derivative",
    "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}],
}


def write_dataset_root(root: Path, name: str, shape: Shape, fmriprep_description: dict) -> Path:
    """Write a BIDS root's top-level files and ``derivatives/fmriprep``'s description.

    ``shape`` gives ``subjects``, ``task`` and ``tr``. Returns the fMRIPrep folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": name, "BIDSVersion": "1.6.0"})
    )
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in shape.subjects]}).to_csv(
        root / "participants.tsv", sep="\t", index=False
    )
    (root / f"task-{shape.task}_bold.json").write_text(
        json.dumps({"RepetitionTime": shape.tr, "TaskName": shape.task})
    )
    prep = root / "derivatives" / "fmriprep"
    prep.mkdir(parents=True)
    (prep / "dataset_description.json").write_text(json.dumps(fmriprep_description))
    return prep


def make_dataset(
    root: Path,
    shape: Shape,
    seed: int = 0,
    confound_sd: float = 1.5,
    surfaces: bool = True,
    rois: bool = True,
    legacy: bool = False,
    space: str = SPACE,
    surface_space: str | None = None,
) -> Truth:
    """Write a raw BIDS + ``derivatives/fmriprep`` dataset of ``shape``; return the truth.

    ``legacy``: the derivatives by fMRIPrep 1.0-1.1 names, as BOLD5000's on OpenNeuro are
    (fMRIPrep 1.1 "Outputs" docs: ``*_bold_space-<space>_preproc.nii.gz``,
    ``*_bold_space-<space>_brainmask.nii.gz``, ``*_bold_confounds.tsv`` with CamelCase
    columns ``X Y Z RotX RotY RotZ CSF WhiteMatter GlobalSignal FramewiseDisplacement
    stdDVARS non-stdDVARS aCompCorNN tCompCorNN CosineNN``, ``*_bold_space-fsaverage5.L.func.gii``).

    ``surface_space`` (``fsaverage5``, ``fsaverage6``): every run also on that surface, as
    fMRIPrep samples the BOLD onto it (one GIFTI per hemisphere, one data array per
    volume): each vertex carries one brain voxel's time series (so the same amplitudes)
    plus its own noise; a medial-wall block is constant (0, as fMRIPrep leaves it), and
    ROI files per hemisphere are written as FreeSurfer writes them (:func:`_surface_rois`).
    """
    rng = np.random.default_rng(seed)
    description = FMRIPREP_DESCRIPTION
    if legacy:  # BIDS-Derivatives RC1 style, before GeneratedBy/DatasetType
        description = {"Name": "fMRIPrep outputs", "BIDSVersion": "1.1.1",
                       "PipelineDescription": {"Name": "fMRIPrep", "Version": "1.1.4"}}  # fmt: skip
    prep = write_dataset_root(root, f"{shape.name}-shaped fixture", shape, description)
    shared, uniq, files = _stimulus_sets(shape, rng)
    stim_root = root / "stimuli"
    for rel in files.values():
        _save_image(stim_root / rel, rng)
    hrf = canonical_hrf(FINE_DT)
    ii, jj, kk = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    truth = Truth()
    conf_meta = confounds_json()
    for sub in shape.subjects:
        brain = (ii**2 + jj**2 + kk**2) < 1.1
        n_vox = int(brain.sum())
        truth.mask[sub] = brain
        # Amplitudes: a few smooth spatial patterns mixed per stimulus, so voxels covary.
        all_stims = [s for s, _, _ in shared + uniq[sub]]
        coords = np.stack([ii[brain], jj[brain], kk[brain]], axis=1)
        basis = np.stack(
            [np.cos(coords @ rng.normal(0, 2, 3) + rng.uniform(0, 6)) for _ in range(6)]
        )
        amps = rng.normal(0, 1, (len(all_stims), 6)) @ basis * 0.8 + 1.0
        amp = pd.DataFrame(amps.astype(np.float32), index=[_stim_id(s) for s in all_stims])
        truth.amplitudes[sub] = amp
        loadings = rng.normal(0, confound_sd, (6, n_vox))
        if surface_space:
            n_v = SURFACE_VERTICES[surface_space]
            voxel_of = rng.integers(0, n_vox, 2 * n_v)  # vertex (L then R) -> its voxel
            wall = medial_wall(n_v)
            truth.medial_wall = wall
            surf_amp = amp.to_numpy()[:, voxel_of]
            surf_amp[:, wall] = np.nan
            truth.surface[sub] = pd.DataFrame(surf_amp, index=amp.index)
        # Each voxel's susceptibility to the (fMRIPrep-estimated) head motion.
        per_session_unique = np.array_split(np.array(uniq[sub], dtype=object), len(shape.sessions))
        for e, ses in enumerate(shape.sessions):
            ses_unique = [tuple(x) for x in per_session_unique[e]]
            run_stims = np.array_split(np.array(ses_unique, dtype=object), len(shape.runs))
            for r, run in enumerate(shape.runs):
                stims = [tuple(x) for x in run_stims[r]] + (shared if r == 0 else [])
                if shape.name == "things" and r == 1:
                    stims = stims + [("catch/catch_01.jpg", "catch", False)]
                order = rng.permutation(len(stims))
                stims = [stims[o] for o in order]
                onsets = 6.0 + shape.trial_spacing_s * np.arange(len(stims))
                assert onsets[-1] + 20 < shape.n_scans * shape.tr, "run too short for its trials"
                n = shape.n_scans
                X = trial_regressors(
                    onsets, np.full(len(stims), shape.trial_duration_s), n, shape.tr, hrf
                )
                keep_trials = [k for k, (_, kind, _) in enumerate(stims) if kind != "catch"]
                B = np.zeros((len(stims), n_vox), dtype=np.float32)
                for k in keep_trials:
                    B[k] = amp.loc[_stim_id(stims[k][0])].to_numpy()
                signal = X @ B  # % signal change
                spikes = sorted(rng.choice(np.arange(5, n - 5), size=3, replace=False).tolist())
                conf = _confounds(rng, n, shape.tr, spikes)
                motion = conf[
                    ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
                ].to_numpy()
                motion = (motion - motion.mean(0)) / (motion.std(0) + 1e-9)
                noise = rng.normal(0, 0.6, (n, n_vox))
                psc = signal + motion @ loadings + noise
                psc[spikes] += rng.normal(8.0, 2.0, (len(spikes), n_vox))
                base = rng.uniform(800, 1200, n_vox)
                ts = base * (1 + psc / 100.0)
                vol = np.zeros((*SHAPE, n), dtype=np.float32)
                vol[brain] = ts.T
                if surface_space:
                    surf = ts[:, voxel_of] * (1 + rng.normal(0, 0.003, (n, 2 * n_v)))
                    surf[:, wall] = 0.0
                    stem_ = f"sub-{sub}_ses-{ses}_task-{shape.task}_run-{run}"
                    func_ = prep / f"sub-{sub}" / f"ses-{ses}" / "func"
                    func_.mkdir(parents=True, exist_ok=True)
                    for h, part in (("L", surf[:, :n_v]), ("R", surf[:, n_v:])):
                        _write_series(
                            func_ / f"{stem_}_hemi-{h}_space-{surface_space}_bold.func.gii", part
                        )
                stem = f"sub-{sub}_ses-{ses}_task-{shape.task}_run-{run}"
                func = prep / f"sub-{sub}" / f"ses-{ses}" / "func"
                first = surfaces and not surface_space and sub == shape.subjects[0]
                first = first and e == 0 and r == 0
                if legacy:
                    _write_legacy(func, stem, space, vol, brain, conf, shape.tr, rng, first)
                else:
                    _write_current(
                        func, stem, space, vol, brain, conf, shape, conf_meta, rng, first
                    )
                raw = root / f"sub-{sub}" / f"ses-{ses}" / "func"
                raw.mkdir(parents=True, exist_ok=True)
                _save_nifti(
                    np.zeros((2, 2, 2, n)), raw / f"{stem}_bold.nii.gz", tr=shape.tr, dtype=np.int16
                )
                if shape.name == "bold5000":
                    ev = _bold5000_rows(stims, onsets, sub, ses, run)
                else:
                    ev = _things_rows(stims, onsets)
                ev.to_csv(raw / f"{stem}_events.tsv", sep="\t", index=False, na_rep="n/a")
        if rois:
            _roi_files(root, sub, brain)
    if surface_space:
        _surface_rois(root, surface_space)
    return truth


def _write_current(func, stem, space, vol, brain, conf, shape, conf_meta, rng, first) -> None:
    sp = f"space-{space}_res-2" if space.startswith("MNI") else f"space-{space}"
    n = vol.shape[3]
    _save_nifti(vol, func / f"{stem}_{sp}_desc-preproc_bold.nii.gz", tr=shape.tr)
    (func / f"{stem}_{sp}_desc-preproc_bold.json").write_text(
        json.dumps({"RepetitionTime": shape.tr, "SkullStripped": False,
                    "TaskName": shape.task, "StartTime": 0.0})
    )  # fmt: skip
    _save_nifti(
        brain.astype(np.uint8), func / f"{stem}_{sp}_desc-brain_mask.nii.gz", dtype=np.uint8
    )
    _save_nifti(vol.mean(axis=3), func / f"{stem}_{sp}_boldref.nii.gz")
    conf.to_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
    (func / f"{stem}_desc-confounds_timeseries.json").write_text(json.dumps(conf_meta, indent=1))
    if first:
        _surface(func / f"{stem}_hemi-L_space-fsaverage5_bold.func.gii", n, rng)
        _surface(func / f"{stem}_hemi-R_space-fsaverage5_bold.func.gii", n, rng)


#: Today's confounds columns -> fMRIPrep 1.0-1.1's names (the inverse of what brainpipe reads).
LEGACY_NAMES = {
    "trans_x": "X", "trans_y": "Y", "trans_z": "Z", "rot_x": "RotX", "rot_y": "RotY",
    "rot_z": "RotZ", "csf": "CSF", "white_matter": "WhiteMatter", "global_signal": "GlobalSignal",
    "framewise_displacement": "FramewiseDisplacement", "std_dvars": "stdDVARS",
    "dvars": "non-stdDVARS",
}  # fmt: skip


def _write_legacy(func, stem, space, vol, brain, conf, tr, rng, first) -> None:
    n = vol.shape[3]
    _save_nifti(vol, func / f"{stem}_bold_space-{space}_preproc.nii.gz", tr=tr)
    _save_nifti(
        brain.astype(np.uint8), func / f"{stem}_bold_space-{space}_brainmask.nii.gz", dtype=np.uint8
    )
    old = {}
    for col in conf.columns:
        if col in LEGACY_NAMES:
            old[LEGACY_NAMES[col]] = conf[col]
        for new, legacy_prefix in (("a_comp_cor_", "aCompCor"), ("t_comp_cor_", "tCompCor"),
                                   ("cosine", "Cosine")):  # fmt: skip
            if col.startswith(new) and col[len(new) :].isdigit():
                old[f"{legacy_prefix}{int(col[len(new) :]):02d}"] = conf[col]
    pd.DataFrame(old).to_csv(
        func / f"{stem}_bold_confounds.tsv", sep="\t", index=False, na_rep="n/a"
    )
    if first:
        _surface(func / f"{stem}_bold_space-fsaverage5.L.func.gii", n, rng)
        _surface(func / f"{stem}_bold_space-fsaverage5.R.func.gii", n, rng)


def _stim_id(value: str) -> str:
    name = Path(value).name
    return name.rsplit(".", 1)[0]


def _surface(path: Path, n: int, rng: np.random.Generator, n_vertices: int = 10242) -> None:
    arrays = [
        nib.gifti.GiftiDataArray(rng.normal(0, 1, n_vertices).astype(np.float32)) for _ in range(n)
    ]
    nib.save(nib.gifti.GiftiImage(darrays=arrays), path)


#: Vertices per hemisphere of FreeSurfer's fsaverage5/6 (icosahedron orders 5 and 6).
SURFACE_VERTICES = {"fsaverage5": 10242, "fsaverage6": 40962}
#: Where the surface ROI files live (FreeSurfer's subject layout: label/{lh,rh}.NAME).
SURFACE_LABELS = "derivatives/freesurfer/{space}/label"


def medial_wall(n_v: int) -> np.ndarray:
    """Indices (both hemispheres, left first) of the fixture's constant medial-wall block."""
    block = np.arange(int(0.88 * n_v), int(0.95 * n_v))
    return np.concatenate([block, n_v + block])


def _write_series(path: Path, data: np.ndarray) -> None:
    """One hemisphere's (n_scans, n_vertices) series, one data array per volume (fMRIPrep)."""
    arrays = [
        nib.gifti.GiftiDataArray(row.astype(np.float32), intent="NIFTI_INTENT_TIME_SERIES")
        for row in data
    ]
    nib.save(nib.gifti.GiftiImage(darrays=arrays), path)


def write_label(path: Path, vertices: np.ndarray, subject: str) -> None:
    """A FreeSurfer ``.label`` as FreeSurfer's ``LabelWrite`` (utils/label.c) writes it:
    a ``#!ascii label`` comment line, the vertex count, then ``vno x y z value`` rows
    (nibabel reads labels but writes none)."""
    rows = [f"{int(v)}  {0.0:.3f}  {0.0:.3f}  {0.0:.3f} {0.0:.10f}" for v in vertices]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"#!ascii label  , from subject {subject} vox2ras=TkReg\n{len(rows)}\n"
    path.write_text(text + "\n".join(rows) + "\n")


#: Parcels of the fixture's ``{lh,rh}.aparc.annot`` (Desikan-Killiany names) -> vertex share.
ANNOT_PARCELS = ("unknown", "pericalcarine", "lateraloccipital", "superiorfrontal")


def surface_parcels(n_v: int) -> np.ndarray:
    """The fixture's parcel index per vertex of one hemisphere (see :func:`_surface_rois`)."""
    parcel = np.full(n_v, 3)  # superiorfrontal
    parcel[: n_v // 8] = 1  # pericalcarine (V1's vertices too)
    parcel[n_v // 8 : n_v // 4] = 2  # lateraloccipital
    parcel[int(0.88 * n_v) : int(0.95 * n_v)] = 0  # the medial wall: unknown
    return parcel


def _surface_rois(root: Path, space: str) -> None:
    """``{lh,rh}.V1_exvivo.label`` and ``{lh,rh}.aparc.annot`` (names as in FreeSurfer's
    fsaverage ``label/`` folder), the annotation written by nibabel's ``write_annot``."""
    n_v = SURFACE_VERTICES[space]
    folder = root / SURFACE_LABELS.format(space=space)
    parcel = surface_parcels(n_v)
    ctab = np.array(
        [[25, 5, 25, 0], [120, 100, 60, 0], [20, 30, 140, 0], [20, 220, 160, 0]], dtype=np.int32
    )
    for hemi in ("lh", "rh"):
        write_label(folder / f"{hemi}.V1_exvivo.label", np.flatnonzero(parcel == 1), space)
        folder.mkdir(parents=True, exist_ok=True)
        nib.freesurfer.write_annot(
            str(folder / f"{hemi}.aparc.annot"), parcel, ctab, list(ANNOT_PARCELS)
        )


def _roi_files(root: Path, sub: str, brain: np.ndarray) -> None:
    """Per-hemisphere ROI masks as BOLD5000 releases them (``sub-CSI1_mask-LHPPA.nii.gz``)."""
    folder = root / "derivatives" / "rois" / f"sub-{sub}"
    x = np.arange(SHAPE[0])[:, None, None]
    y = np.arange(SHAPE[1])[None, :, None]
    for hemi, side in (("LH", x < SHAPE[0] // 2), ("RH", x >= SHAPE[0] // 2)):
        early = brain & side & (y < SHAPE[1] // 2)
        ppa = brain & side & (y >= SHAPE[1] // 2)
        _save_nifti(
            early.astype(np.uint8), folder / f"sub-{sub}_mask-{hemi}EarlyVis.nii.gz", dtype=np.uint8
        )
        _save_nifti(
            ppa.astype(np.uint8), folder / f"sub-{sub}_mask-{hemi}PPA.nii.gz", dtype=np.uint8
        )


def copy_dataset(src: Path, dst: Path) -> Path:
    """A private copy to break."""
    shutil.copytree(src, dst, symlinks=True)
    return dst
