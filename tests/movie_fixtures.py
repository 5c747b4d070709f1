"""A movie-watching BIDS + fMRIPrep dataset made from the synthetic movie world.

Naturalistic datasets (Sherlock, Raider) are BIDS folders whose runs every subject watched
in the same order, on one stimulus clock. This fixture writes the synthetic movie world
(:mod:`brainpipe.datasets.synthetic_movie`: smooth shared latents mixed into each
subject's voxels plus noise) as such a folder, in the fMRIPrep layout of
:mod:`tests.fmriprep_fixtures` (file names from fMRIPrep's "Outputs" documentation): the
movie's clock cut into ``runs`` consecutive runs of session ``01``, each run's BOLD in
% signal change over a per-voxel baseline, inside a ball-shaped brain mask. The events
mark the movie's clips (one every ``clip_trs`` TRs, a ``stimulus`` column naming the
clip's frame image under ``stimuli/``, a JPEG), as a movie dataset's events do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainpipe.datasets.synthetic_movie import MovieParams, MovieWorld, generate_movie

from .fmriprep_fixtures import (
    FMRIPREP_DESCRIPTION,
    SHAPE,
    SPACE,
    Shape,
    _confounds,
    _save_image,
    _save_nifti,
    _write_current,
    confounds_json,
    write_dataset_root,
)

MOVIE_SHAPE = Shape(
    name="movie", subjects=["01", "02", "03"], sessions=["01"], runs=["01", "02"],
    task="movie", tr=1.5, n_scans=150, trial_spacing_s=15.0, trial_duration_s=14.0,
    n_unique=0, n_shared=0,
)  # fmt: skip


def brain_mask() -> np.ndarray:
    """The ball-shaped brain mask every subject gets (as the fMRIPrep fixtures')."""
    ii, jj, kk = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    return (ii**2 + jj**2 + kk**2) < 1.1


def make_movie_dataset(
    root: Path, shape: Shape = MOVIE_SHAPE, seed: int = 0, noise_sd: float = 2.0,
    signal_psc: float = 1.0,
) -> MovieWorld:  # fmt: skip
    """Write the movie world as a BIDS + ``derivatives/fmriprep`` folder; return its truth.

    ``signal_psc``: the latents' contribution in % signal change per unit of the world's
    amplitude (``signal_sd`` 1, noise ``noise_sd`` in the same units).
    """
    rng = np.random.default_rng(seed)
    brain = brain_mask()
    n_vox = int(brain.sum())
    n_scans = shape.n_scans
    world = generate_movie(
        MovieParams(
            seed=seed, n_subjects=len(shape.subjects), n_components=5,
            n_timepoints=n_scans * len(shape.runs), min_voxels=n_vox, max_voxels=n_vox,
            noise_sd=noise_sd,
        )
    )  # fmt: skip
    prep = write_dataset_root(root, "movie-watching fixture", shape, FMRIPREP_DESCRIPTION)
    clip_trs = int(round(shape.trial_spacing_s / shape.tr))
    n_clips = n_scans // clip_trs
    for r in range(len(shape.runs)):
        for c in range(n_clips):
            # no extension: with the registry's defaults (column `stimulus`, image
            # "{value}") the bids view reads the file named by the stimulus id
            _save_image(root / "stimuli" / f"clip-r{r + 1}c{c + 1:02d}", rng)
    conf_meta = confounds_json()
    for s, sub in enumerate(shape.subjects):
        base = rng.uniform(800, 1200, n_vox)
        for r, run in enumerate(shape.runs):
            psc = signal_psc * world.data[s][r * n_scans : (r + 1) * n_scans]
            vol = np.zeros((*SHAPE, n_scans), dtype=np.float32)
            vol[brain] = (base * (1 + psc / 100.0)).T
            stem = f"sub-{sub}_ses-{shape.sessions[0]}_task-{shape.task}_run-{run}"
            func = prep / f"sub-{sub}" / f"ses-{shape.sessions[0]}" / "func"
            conf = _confounds(rng, n_scans, shape.tr, [])
            _write_current(func, stem, SPACE, vol, brain, conf, shape, conf_meta, rng, False)
            raw = root / f"sub-{sub}" / f"ses-{shape.sessions[0]}" / "func"
            raw.mkdir(parents=True, exist_ok=True)
            _save_nifti(np.zeros((2, 2, 2, n_scans)), raw / f"{stem}_bold.nii.gz", tr=shape.tr,
                        dtype=np.int16)  # fmt: skip
            onsets = shape.trial_spacing_s * np.arange(n_clips)
            pd.DataFrame(
                {
                    "onset": onsets,
                    "duration": shape.trial_duration_s,
                    "stimulus": [f"clip-r{r + 1}c{c + 1:02d}" for c in range(n_clips)],
                }
            ).to_csv(raw / f"{stem}_events.tsv", sep="\t", index=False)
    return world
