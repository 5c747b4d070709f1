"""Fetching NSD's files for ingest, and the stimuli the trials use (range reads)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from brainpipe.datasets.nsd_layout import (
    EXPDESIGN_KEY,
    STIM_INFO_KEY,
    STIMULI_KEY,
    NsdOptions,
    check_sessions,
    object_cache,
    read_expdesign,
    stimulus_name,
    subject_keys,
)
from brainpipe.errors import BrainpipeInputError
from brainpipe.remote import RangeFile, S3Source, fetch_objects, safe_local_path
from brainpipe.storage import (
    atomic_path,
    write_text_atomic,
)

log = logging.getLogger(__name__)


# --- download -----------------------------------------------------------------------------
def download_nsd(
    dest: str | Path,
    subjects: list[str],
    sessions: list[str],
    opts: NsdOptions,
    cache: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Fetch what ingest needs for ``subjects`` × ``sessions`` and lay it out under ``dest``.

    Objects go to ``cache`` (a mirror of the bucket's keys that persists across
    failed runs, so transfers resume); ``dest`` is then built atomically from
    hard links to them (copies across file systems), plus ``stimuli/`` with the
    images the trials use (read by range requests from the 40 GB stimulus file,
    never downloaded whole) and ``stimuli/stimuli.tsv``. With
    ``opts.stream_betas`` the session betas are left to ingest, which fetches
    them into the same cache while it converts them (:mod:`.nsd_stream`).
    """
    check_sessions(subjects, sessions)
    dest = Path(dest)
    cache = Path(cache) if cache else object_cache(dest)
    source = opts.source()
    keys = [EXPDESIGN_KEY, STIM_INFO_KEY]
    for subject in subjects:
        keys += subject_keys(subject, sessions, opts, betas=not opts.stream_betas)
    log.info("NSD: %d objects from %s into %s", len(keys), source.url(""), cache)
    fetch_objects(source, keys, cache, workers=opts.workers, progress=progress)
    return assemble_from_cache(dest, cache, keys, source, opts, subjects, sessions)


def assemble_from_cache(
    dest: Path,
    cache: Path,
    keys: list[str],
    source: S3Source,
    opts: NsdOptions,
    subjects: list[str],
    sessions: list[str],
) -> Path:
    """Build ``dest`` atomically from hard links to the fetched ``keys`` in ``cache``.

    Adds ``stimuli/`` (the images the trials of ``subjects`` x ``sessions`` use, by range
    reads) when ``opts.stimuli``. Shared by the volume and the fsaverage downloads.
    """
    with atomic_path(dest) as tmp:
        for key in keys:
            link_or_copy(safe_local_path(cache, key), safe_local_path(tmp, key))
        if opts.stimuli:
            design = read_expdesign(safe_local_path(cache, EXPDESIGN_KEY))
            ids = np.unique(
                np.concatenate([design.trial_stimuli(s, ses) for s in subjects for ses in sessions])
            )
            extract_stimuli(source, opts, ids, design.sharedix, Path(tmp) / "stimuli", cache)
    return dest


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (copy across file systems)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copy2(src, dst)


def extract_stimuli(
    source: S3Source,
    opts: NsdOptions,
    ids: np.ndarray,
    shared: np.ndarray,
    out_dir: Path,
    cache: Path | None = None,
) -> pd.DataFrame:
    """Write images ``ids`` (0-based 73k) as PNGs, and ``stimuli.tsv`` listing them.

    Columns of ``stimuli.tsv``: stimulus, image, caption, shared. NSD's bucket has no
    captions: with ``opts.captions`` they come from COCO's caption files joined on
    ``cocoId`` (:mod:`.nsd_captions`; ``nsd_stim_info_merged.csv`` read from ``cache``),
    otherwise the column is empty.

    Reads only those rows of ``imgBrick`` — from ``opts.stimuli_file`` if set,
    else by range requests on the bucket's HDF5 — in index order, one at a time.
    """
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "images").mkdir(exist_ok=True)
    captions: dict[int, str] = {}
    if opts.captions:
        from brainpipe.datasets import nsd_captions

        if cache is None:
            raise ValueError("captions need the object cache (nsd_stim_info_merged.csv)")
        files = nsd_captions.fetch_caption_files(opts.captions, cache, opts.workers)
        captions = nsd_captions.nsd_captions(
            safe_local_path(cache, STIM_INFO_KEY), files, [int(i) for i in ids]
        )
    raw = open(opts.stimuli_file, "rb") if opts.stimuli_file else RangeFile(source, STIMULI_KEY)
    with raw, h5py.File(raw, "r") as h5:
        if "imgBrick" not in h5:
            raise BrainpipeInputError(STIMULI_KEY, "imgBrick", "dataset is missing")
        brick = h5["imgBrick"]
        if brick.ndim != 4 or brick.shape[3] != 3 or ids.max() >= brick.shape[0]:
            raise BrainpipeInputError(
                STIMULI_KEY,
                "imgBrick",
                f"expected (73000, H, W, 3) covering id {ids.max()}, got {brick.shape}",
            )
        rows = []
        shared_set = set(shared.tolist())
        for i in tqdm(sorted(int(i) for i in ids), desc="NSD stimuli", unit="img", mininterval=1.0):
            name = stimulus_name(i)
            Image.fromarray(np.asarray(brick[i], dtype=np.uint8)).save(
                out_dir / "images" / f"{name}.png"
            )
            rows.append((name, f"images/{name}.png", captions.get(i, ""), int(i in shared_set)))
    table = pd.DataFrame(rows, columns=["stimulus", "image", "caption", "shared"])
    write_text_atomic(table.to_csv(sep="\t", index=False), out_dir / "stimuli.tsv")
    return table
