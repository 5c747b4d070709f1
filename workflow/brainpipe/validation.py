"""Check every input of a dataset before any compute.

Each problem stops the pipeline with a :class:`BrainpipeInputError` naming the
file and the field. On success a manifest of what was checked is returned
(and written by the workflow), so later stages run on inputs known to agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from brainpipe.bids import BidsLayout, read_events, read_stimuli, read_tr, run_keys
from brainpipe.errors import BrainpipeInputError

#: Relative tolerance when comparing TRs from the config, sidecar and header.
TR_RTOL = 1e-3


def _check_tr(source: Path, field: str, found: float, expected: float, expected_from: str) -> None:
    if not np.isclose(found, expected, rtol=TR_RTOL):
        raise BrainpipeInputError(
            source, field, f"TR is {found} s but {expected_from} says {expected} s"
        )


def check_stimuli(layout: BidsLayout) -> dict[str, Path]:
    """Check the stimuli table and that every image exists; return id -> image path."""
    table = read_stimuli(layout.stimuli_table)
    images = {}
    for row in table.itertuples(index=False):
        image = layout.stimuli_dir / str(row.image)
        if not image.exists():
            raise BrainpipeInputError(
                layout.stimuli_table, "image", f"stimulus {row.stimulus!r}: file {image} is missing"
            )
        images[str(row.stimulus)] = image
    return images


def check_subject(
    layout: BidsLayout,
    subject: str,
    sessions: list[str],
    runs: list[str],
    tr: float,
    images: dict[str, Path],
) -> dict[str, Any]:
    """Check one subject's brain mask, runs, sidecars and events.

    Returns
    -------
    dict
        ``{"n_voxels": ..., "volume_shape": ..., "runs": [{session, run, n_scans, n_trials}]}``.
    """
    mask_path = layout.brain_mask(subject)
    if not mask_path.exists():
        raise BrainpipeInputError(mask_path, "<file>", f"brain mask of sub-{subject} is missing")
    mask_img = nib.load(mask_path)
    volume_shape = tuple(int(s) for s in mask_img.shape[:3])
    checked_runs = []
    for key in run_keys(subject, sessions, runs):
        bold_path = layout.bold(key)
        if not bold_path.exists():
            raise BrainpipeInputError(
                bold_path,
                "<file>",
                f"run missing: sub-{subject} ses-{key.session} run-{key.run} is listed in the "
                "config (keys 'sessions' and 'runs') but has no BOLD file",
            )
        sidecar_tr = read_tr(layout.sidecar(key))
        _check_tr(layout.sidecar(key), "RepetitionTime", sidecar_tr, tr, "the config key 'tr'")
        img = nib.load(bold_path)
        if img.ndim != 4:
            raise BrainpipeInputError(bold_path, "shape", f"expected a 4D image, got {img.shape}")
        if tuple(img.shape[:3]) != volume_shape:
            raise BrainpipeInputError(
                bold_path,
                "shape",
                f"volume {tuple(img.shape[:3])} differs from the brain mask {volume_shape}",
            )
        header_tr = float(img.header.get_zooms()[3])
        if header_tr > 0:
            _check_tr(
                bold_path,
                "pixdim[4] (TR)",
                header_tr,
                sidecar_tr,
                f"its sidecar {layout.sidecar(key).name}",
            )
        n_scans = int(img.shape[3])
        events = read_events(layout.events(key))
        late = events["onset"] >= n_scans * tr
        if late.any():
            raise BrainpipeInputError(
                layout.events(key),
                "onset",
                f"onset {events['onset'][late].iloc[0]} s is after the run's end "
                f"({n_scans} scans x {tr} s)",
            )
        unknown = sorted(set(events["stimulus"]) - set(images))
        if unknown:
            raise BrainpipeInputError(
                layout.events(key),
                "stimulus",
                f"stimulus id {unknown[0]!r} has no image in {layout.stimuli_table}",
            )
        checked_runs.append(
            {"session": key.session, "run": key.run, "n_scans": n_scans, "n_trials": len(events)}
        )
    n_voxels = int(np.count_nonzero(np.asarray(mask_img.dataobj)))
    return {"n_voxels": n_voxels, "volume_shape": list(volume_shape), "runs": checked_runs}


def validate_subject(
    root: str | Path,
    subject: str,
    sessions: list[str],
    runs: list[str],
    tr: float,
    task: str = "images",
) -> dict[str, Any]:
    """Check everything one subject's pipeline reads; return a manifest of what was checked.

    Parameters
    ----------
    root : path
        Dataset root.
    subject : str
        Subject label (config key ``subjects``).
    sessions, runs : list of str
        Runs the config asks for (keys ``sessions`` and ``runs``).
    tr : float
        The config's repetition time in seconds.
    task : str
        BIDS task label.

    Raises
    ------
    BrainpipeInputError
        At the first problem, naming the file and the field.
    """
    layout = BidsLayout(Path(root), task)
    images = check_stimuli(layout)
    return {
        "root": str(root),
        "subject": subject,
        "n_stimuli": len(images),
        **check_subject(layout, subject, sessions, runs, tr, images),
    }


def validate_dataset(
    root: str | Path,
    subjects: list[str],
    sessions: list[str],
    runs: list[str],
    tr: float,
    task: str = "images",
) -> dict[str, dict[str, Any]]:
    """:func:`validate_subject` for every subject; the manifests by subject."""
    return {s: validate_subject(root, s, sessions, runs, tr, task) for s in subjects}
