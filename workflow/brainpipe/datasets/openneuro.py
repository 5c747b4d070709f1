"""OpenNeuro datasets from their public bucket, and local BIDS / fMRIPrep folders.

OpenNeuro publishes every dataset under ``s3://openneuro.org/{accession}/`` in
BIDS (``sub-*/[ses-*/]func/*_bold.nii.gz``, ``*_events.tsv``, a ``stimuli/``
folder at the root). brainpipe fetches the top-level metadata, ``stimuli/``,
and the selected subjects' folders (optionally only some sessions, and
optionally the dataset's ``derivatives/``). Events come from each run's
``*_events.tsv``; stimuli from the dataset's ``stimuli/`` folder.

A local BIDS folder (and optionally an fMRIPrep derivatives folder) is used
in place: the data folder is made of symbolic links to it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brainpipe.errors import BrainpipeInputError
from brainpipe.remote import WORKERS, S3Source, fetch_objects, safe_local_path
from brainpipe.remote.source import ObjectInfo
from brainpipe.storage import atomic_path

log = logging.getLogger(__name__)

#: OpenNeuro's public bucket.
OPENNEURO_BUCKET = "openneuro.org"
_ACCESSION = re.compile(r"^ds\d{6}$")


def select_keys(
    objects: list[ObjectInfo],
    accession: str,
    subjects: list[str],
    sessions: list[str] | None = None,
    derivatives: bool = False,
    keep_derivative: Callable[[str], bool] | None = None,
) -> list[ObjectInfo]:
    """The objects of ``accession`` brainpipe needs for ``subjects`` (and ``sessions``).

    Kept: top-level files (``dataset_description.json``, ``participants.tsv``,
    ``task-*_bold.json``, …), everything under ``stimuli/``, the selected
    ``sub-*`` folders (within them only the selected ``ses-*`` folders, if
    given), and ``derivatives/`` files of those subjects (and sessions) if
    ``derivatives``, narrowed by ``keep_derivative(relative path)`` if given.
    """
    prefix = f"{accession}/"
    want_sub = {f"sub-{s}" for s in subjects}
    want_ses = {f"ses-{s}" for s in sessions} if sessions else None
    keep = []
    for obj in objects:
        rel = obj.key[len(prefix) :] if obj.key.startswith(prefix) else None
        if not rel or rel.endswith("/"):
            continue
        parts = rel.split("/")
        if len(parts) == 1 or parts[0] == "stimuli":
            keep.append(obj)
        elif parts[0] in want_sub:
            ses = next((p for p in parts[1:] if p.startswith("ses-")), None)
            if want_ses is None or ses is None or ses in want_ses:
                keep.append(obj)
        elif parts[0] == "derivatives" and derivatives:
            sub = next((p for p in parts if p.startswith("sub-")), None)
            ses = next((p for p in parts[1:] if p.startswith("ses-")), None)
            if sub is not None and sub not in want_sub:
                continue
            if want_ses is not None and ses is not None and ses not in want_ses:
                continue
            if keep_derivative is None or keep_derivative(rel):
                keep.append(obj)
    return keep


def download_openneuro(
    dest: str | Path,
    accession: str,
    subjects: list[str],
    source: S3Source | None = None,
    sessions: list[str] | None = None,
    derivatives: bool = False,
    cache: str | Path | None = None,
    workers: int = WORKERS,
    progress: bool = True,
    keep_derivative: Callable[[str], bool] | None = None,
) -> Path:
    """Fetch an OpenNeuro accession's files for ``subjects`` into ``dest`` (a BIDS root).

    Objects are fetched into ``cache`` (persisting across failures, so they
    resume), then ``dest`` is built atomically from hard links to them.

    Raises
    ------
    BrainpipeInputError
        Bad accession, no such dataset, or a selected subject that it lacks.
    """
    if not _ACCESSION.match(accession):
        raise BrainpipeInputError(
            "config", "source.accession", f"expected like 'ds001499', got {accession!r}"
        )
    source = source or S3Source(OPENNEURO_BUCKET)
    dest = Path(dest)
    cache = Path(cache) if cache else dest.with_name(f".{dest.name}-objects")
    listing = source.list(f"{accession}/")
    if not listing:
        raise BrainpipeInputError(
            source.url(f"{accession}/"), "accession", "no objects: is the accession right?"
        )
    present = {o.key.split("/")[1] for o in listing if o.key.count("/") >= 2}
    missing = [s for s in subjects if f"sub-{s}" not in present]
    if missing:
        raise BrainpipeInputError(
            source.url(f"{accession}/"),
            "subjects",
            f"no sub-{missing[0]} (has {sorted(p for p in present if p.startswith('sub-'))})",
        )
    keep = select_keys(listing, accession, subjects, sessions, derivatives, keep_derivative)
    log.info("%s: %d of %d objects for subjects %s", accession, len(keep), len(listing), subjects)
    prefix = f"{accession}/"
    fetch_objects(source, keep, cache, strip_prefix=prefix, workers=workers, progress=progress)
    with atomic_path(dest) as tmp:
        for obj in keep:
            rel = obj.key[len(prefix) :]
            src, dst = safe_local_path(cache, rel), safe_local_path(tmp, rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                import shutil

                shutil.copy2(src, dst)
    return dest


def check_bids_root(path: str | Path, subjects: list[str]) -> Path:
    """Check that ``path`` is a BIDS root holding ``sub-{s}`` for every subject."""
    path = Path(path)
    desc = path / "dataset_description.json"
    if not desc.exists():
        raise BrainpipeInputError(
            desc, "<file>", "not a BIDS folder: dataset_description.json missing"
        )
    for s in subjects:
        if not (path / f"sub-{s}").is_dir():
            raise BrainpipeInputError(path, "subjects", f"sub-{s} folder is missing")
    return path


def check_fmriprep(path: str | Path) -> dict[str, Any]:
    """Check an fMRIPrep derivatives folder; return its dataset_description.json."""
    desc = Path(path, "dataset_description.json")
    if not desc.exists():
        raise BrainpipeInputError(
            desc, "<file>", "derivatives folder lacks dataset_description.json"
        )
    try:
        meta = json.loads(desc.read_text())
    except json.JSONDecodeError as err:
        raise BrainpipeInputError(desc, "<file>", f"not valid JSON ({err})") from err
    generated = meta.get("GeneratedBy") or [meta.get("PipelineDescription", {})]
    names = [str(g.get("Name", "")).lower() for g in generated if isinstance(g, dict)]
    # DatasetType is absent in derivatives written before BIDS 1.4 (fMRIPrep < 20.1)
    if meta.get("DatasetType", "derivative") != "derivative" or not any(
        "fmriprep" in n for n in names
    ):
        raise BrainpipeInputError(
            desc,
            "GeneratedBy",
            f"expected DatasetType 'derivative' generated by fMRIPrep, got {names}",
        )
    return meta


def link_local_bids(
    dest: str | Path, path: str | Path, subjects: list[str], fmriprep: str | Path | None = None
) -> Path:
    """Make ``dest`` a data folder of symbolic links into a local BIDS folder.

    Links the top-level files, ``stimuli/``, the selected subjects and, if
    given, the fMRIPrep folder as ``derivatives/fmriprep``. Nothing is copied.
    """
    root = check_bids_root(path, subjects).resolve()
    if fmriprep is not None:
        check_fmriprep(fmriprep)
    with atomic_path(dest) as tmp:
        Path(tmp).mkdir(parents=True)
        for entry in root.iterdir():
            if (
                entry.is_file()
                or entry.name == "stimuli"
                or entry.name in {f"sub-{s}" for s in subjects}
            ):
                os.symlink(entry, Path(tmp, entry.name))
        if fmriprep is not None:
            Path(tmp, "derivatives").mkdir(exist_ok=True)
            os.symlink(Path(fmriprep).resolve(), Path(tmp, "derivatives", "fmriprep"))
    return Path(dest)
