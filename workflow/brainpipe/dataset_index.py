"""The raw files each stage reads, listed while the DAG is built.

Rules depend on these files rather than on the dataset's folder, so editing one
raw file reruns exactly the jobs that read it (Snakemake compares each input's
modification time and, for small files, its checksum).

Listing is path arithmetic on the BIDS layout plus one directory listing per
subject (its ROI masks) and one read of the stimuli table's ``image`` column: a
few milliseconds per subject, so the DAG of a large dataset still builds in
seconds.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from brainpipe.bids import BidsLayout, run_keys


def run_files(
    root: str | Path,
    task: str,
    subject: str,
    sessions: list[str],
    runs: list[str] | str,
    kind: str,
) -> list[str]:
    """One file per run of ``subject``: ``kind`` is ``bold``, ``sidecar`` or ``events``.

    ``runs: all`` lists each session's runs from its BOLD files.
    """
    layout = BidsLayout(Path(root), task)
    return [str(getattr(layout, kind)(key)) for key in run_keys(subject, sessions, runs, layout)]


def mask_files(root: str | Path, task: str, subject: str) -> list[str]:
    """The subject's brain mask and every ROI mask the dataset has for it."""
    layout = BidsLayout(Path(root), task)
    return [str(layout.brain_mask(subject))] + [
        str(layout.roi_mask(subject, roi)) for roi in layout.available_rois(subject)
    ]


def stimuli_table(root: str | Path) -> str:
    """The stimuli table."""
    return str(BidsLayout(Path(root)).stimuli_table)


def _stimuli_rows(root: str | Path) -> list[dict[str, str]] | None:
    try:
        with open(BidsLayout(Path(root)).stimuli_table, encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def n_shared(root: str | Path) -> int | None:
    """How many stimuli the table marks shared (None: no readable table yet)."""
    rows = _stimuli_rows(root)
    if not rows:
        return None
    return sum(str(row.get("shared", "")).strip() in ("1", "1.0") for row in rows)


@lru_cache(maxsize=8)
def stimulus_images(root: str | Path) -> tuple[str, ...]:
    """Every image the stimuli table lists (those that exist; validation names the rest).

    A table that cannot be read yields no images here: the ``validate_stimuli`` job,
    which depends on the table, then fails with the file and the field.
    """
    layout = BidsLayout(Path(root))
    rows = _stimuli_rows(root)
    if rows is None:
        return ()
    images = []
    for row in rows:
        image = layout.stimuli_dir / str(row.get("image") or "")
        if row.get("image") and image.is_file():
            images.append(str(image))
    return tuple(dict.fromkeys(images))
