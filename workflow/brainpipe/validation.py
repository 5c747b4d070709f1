"""Check every input of a dataset before any compute.

Each problem stops the pipeline with a :class:`BrainpipeInputError` naming the
file and the field and what was expected. On success a manifest of what was
checked is returned (and written by the workflow), so later stages run on
inputs known to agree.

What is opened and checked (everything a later stage reads):

- every file: exists, is a regular file (no dangling link, no symlink loop), is
  readable, is not empty;
- text files (``stimuli.tsv``, ``*_events.tsv``, ``*_bold.json``): strict UTF-8;
- ``*_events.tsv``: columns, numeric finite onsets and durations, onsets >= 0 and in
  ascending order, no duplicated or overlapping trials, every trial inside its run,
  every stimulus id in the stimuli table;
- NIfTI files: the gzip stream decompresses completely (CRC and length), the data
  the header announces is all there, finite positive voxel sizes and TR, finite
  scaling, a numeric data type, the same affine and volume shape as the subject's
  brain mask (every run and every ROI mask);
- BOLD samples: the non-finite samples and dead voxels the policy of
  :mod:`brainpipe.preprocess` handles (censored volumes, dropped voxels) are counted
  and recorded in the manifest; a run with too few usable volumes, or a subject with
  no usable voxel, is an error;
- stimulus images: decodable (fully loaded by Pillow).

The config is checked against the dataset when the DAG is built
(:func:`check_config_against_dataset`).
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import logging
import os
import stat
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from brainpipe.bids import BidsLayout, read_events, read_stimuli, read_tr, run_keys
from brainpipe.config import schema_default
from brainpipe.errors import BrainpipeInputError

log = logging.getLogger(__name__)

#: Relative tolerance when comparing TRs from the config, sidecar and header.
TR_RTOL = 1e-3
#: Absolute tolerance (mm) when comparing affines of one subject's images.
AFFINE_ATOL = 1e-3
#: A run with more than this fraction of censored volumes is refused (not enough data
#: left for a trustworthy fit); see docs/input-policy.md.
MAX_CENSORED_FRACTION = 0.2
#: Slack (s) when judging whether two trials overlap (rounding in events files).
OVERLAP_TOLERANCE_S = 1e-3


def _show(value: Any) -> str:
    """A value as a person reads it: numpy scalars as plain numbers (no ``np.float64(...)``)."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


# --- files ----------------------------------------------------------------------------


def check_file(path: str | Path, what: str) -> Path:
    """Check that ``path`` is a readable, non-empty regular file; return it.

    Raises
    ------
    BrainpipeInputError
        Missing, a dangling link or symlink loop, a folder, unreadable, or empty.
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise BrainpipeInputError(
                path, "<file>", f"{what} is a symlink loop (the link points back to itself)"
            ) from None
        if path.is_symlink():
            raise BrainpipeInputError(
                path, "<file>", f"{what} is a dangling link (to {os.readlink(path)})"
            ) from None
        raise BrainpipeInputError(path, "<file>", f"{what} is missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise BrainpipeInputError(path, "<file>", f"{what} is not a regular file")
    if info.st_size == 0:
        raise BrainpipeInputError(path, "<file>", f"{what} is empty (0 bytes)")
    # the owner's read bit too: a file its owner cannot read is broken for everyone but
    # root (jobs running as root would not notice)
    if not os.access(path, os.R_OK) or not info.st_mode & stat.S_IRUSR:
        raise BrainpipeInputError(
            path, "<file>", f"{what} is not readable (permissions {stat.filemode(info.st_mode)})"
        )
    return path


def check_text(path: str | Path, what: str) -> str:
    """Check a text file (see :func:`check_file`) and that it is UTF-8; return its text."""
    raw = check_file(path, what).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise BrainpipeInputError(
            path,
            "<encoding>",
            f"byte {err.start} (line {line}) is {raw[err.start : err.start + 1]!r}: "
            "expected UTF-8 text",
        ) from None


# --- NIfTI ----------------------------------------------------------------------------


def load_nifti(path: str | Path, what: str) -> nib.Nifti1Image:
    """Open a NIfTI file after checking it completely; the image holds its data in memory.

    The gzip stream is decompressed to its end (CRC and length checked), the header
    is parsed, the data it announces must all be there, and its numbers must be usable.

    Raises
    ------
    BrainpipeInputError
        Naming the file and the header field (or ``<gzip>`` / ``<data>``).
    """
    path = check_file(path, what)
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
            raise BrainpipeInputError(
                path,
                "<gzip>",
                f"{what} does not decompress completely ({err}); expected a whole gzip "
                "stream (a truncated or damaged download?)",
            ) from None
    try:
        img = nib.Nifti1Image.from_bytes(raw)
    except Exception as err:  # nibabel raises several types for a bad header
        raise BrainpipeInputError(
            path, "<header>", f"{what} is not a readable NIfTI-1 file ({err})"
        ) from None
    header = img.header
    dtype = header.get_data_dtype()
    if dtype.kind not in "iuf" or dtype.fields is not None:
        raise BrainpipeInputError(
            path, "datatype", f"{what} stores {dtype} samples; expected integers or floats"
        )
    shape = tuple(int(s) for s in header.get_data_shape())
    if not shape or min(shape) < 1:
        raise BrainpipeInputError(path, "dim", f"{what} has shape {shape}; expected sizes >= 1")
    offset = int(header.get_data_offset())
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    if len(raw) < needed:
        raise BrainpipeInputError(
            path,
            "<data>",
            f"header announces {shape} x {dtype} from byte {offset} ({needed} bytes), "
            f"the file has {len(raw)} bytes",
        )
    zooms = np.asarray(header["pixdim"][1 : len(shape) + 1], dtype=float)
    if not np.isfinite(zooms).all() or (zooms[:3] <= 0).any():
        raise BrainpipeInputError(
            path,
            "pixdim",
            f"voxel sizes / TR are {[float(f'{z:.6g}') for z in zooms]}; expected finite numbers, "
            "voxel sizes > 0",
        )
    # from the file's bytes: nibabel's parsed header may already have normalised them
    endian = header.endianness
    slope, inter = (float(v) for v in np.frombuffer(raw[112:120], dtype=f"{endian}f4"))
    # NaN or 0 slope means "no scaling" (NIfTI-1); infinities or a NaN offset to a real
    # slope make every sample non-finite
    for field, value in (("scl_slope", slope), ("scl_inter", inter)):
        if np.isinf(value) or (
            field == "scl_inter" and np.isnan(value) and slope not in (0.0,) and np.isfinite(slope)
        ):
            raise BrainpipeInputError(
                path, field, f"{what} has scaling {field} = {value}; expected a finite number"
            )
    affine = img.affine
    if affine is None or not np.isfinite(affine).all():
        raise BrainpipeInputError(
            path, "srow/qform", f"{what} has a non-finite affine; expected finite numbers"
        )
    return img


def _same_grid(path: Path, img: nib.Nifti1Image, ref: nib.Nifti1Image, ref_path: Path) -> None:
    if tuple(img.shape[:3]) != tuple(ref.shape[:3]):
        raise BrainpipeInputError(
            path,
            "shape",
            f"volume {tuple(img.shape[:3])} differs from the brain mask {tuple(ref.shape[:3])}",
        )
    if not np.allclose(img.affine, ref.affine, atol=AFFINE_ATOL):
        diff = float(np.abs(img.affine - ref.affine).max())
        raise BrainpipeInputError(
            path,
            "affine (srow/qform)",
            f"differs from the subject's brain mask {ref_path.name} by up to {diff:.4g} mm; "
            "expected every image of a subject on one grid",
        )


def usable_samples(
    data: np.ndarray, max_censored_fraction: float = MAX_CENSORED_FRACTION
) -> dict[str, np.ndarray]:
    """The input policy's view of one run's masked samples (docs/input-policy.md).

    Parameters
    ----------
    data : numpy.ndarray, shape (n_scans, n_voxels)
        Raw intensities of the brain voxels.

    Returns
    -------
    dict
        ``dead`` (n_voxels,) bool: voxels non-finite in more than
        ``max_censored_fraction`` of the volumes that are not broken as a whole, constant
        (all zero included) over their finite samples, or with a mean intensity <= 0 (no
        percent signal change) — dropped from the subject;
        ``censored`` (n_scans,) bool: volumes non-finite in most voxels (a broken volume),
        or with a non-finite sample in a voxel that is not dead — censored (left out of
        the fit).
    """
    finite = np.isfinite(data)
    broken = finite.mean(axis=1) < 0.5  # whole-volume failures: censor, do not kill voxels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: dead anyway
        masked = np.where(finite, data, np.nan)
        spread = np.nanmax(masked, axis=0) - np.nanmin(masked, axis=0)
        mean = np.nanmean(masked, axis=0)
    intact = finite[~broken]
    bad_fraction = 1.0 - intact.mean(axis=0) if len(intact) else np.ones(data.shape[1])
    dead = (bad_fraction > max_censored_fraction) | ~(spread > 0) | ~(mean > 0)
    censored = broken | ~finite[:, ~dead].all(axis=1)
    return {"dead": dead, "censored": censored}


# --- stimuli --------------------------------------------------------------------------


def check_stimuli(layout: BidsLayout, decode_images: bool = True) -> dict[str, Path]:
    """Check the stimuli table and every image it lists; return id -> image path."""
    table_path = layout.stimuli_table
    text = check_text(table_path, "stimuli table")
    if not text.strip():
        raise BrainpipeInputError(table_path, "<file>", "stimuli table has no rows")
    table = read_stimuli(table_path)
    if table.empty:
        raise BrainpipeInputError(table_path, "<file>", "stimuli table has a header but no rows")
    shared = pd.to_numeric(table["shared"], errors="coerce")
    bad = shared.isna() | ~shared.isin([0, 1])
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise BrainpipeInputError(
            table_path,
            "shared",
            f"row {row + 1}: expected 0 or 1, got {_show(table['shared'].iloc[row])}",
        )
    images = {}
    for row in table.itertuples(index=False):
        image = layout.stimuli_dir / str(row.image)
        if not image.exists() and not image.is_symlink():
            raise BrainpipeInputError(
                table_path, "image", f"stimulus {row.stimulus!r}: file {image} is missing"
            )
        check_file(image, f"image of stimulus {row.stimulus!r}")
        if decode_images:
            _check_image(image, str(row.stimulus))
        images[str(row.stimulus)] = image
    return images


def _check_image(path: Path, stimulus: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            size = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BrainpipeInputError(
            path,
            "<image>",
            f"image of stimulus {stimulus!r} cannot be decoded ({err}); expected a whole "
            "PNG/JPEG image",
        ) from None
    if min(size) < 1:
        raise BrainpipeInputError(path, "<image>", f"image has size {size}; expected pixels")


def validate_stimuli(root: str | Path, task: str = "images") -> dict[str, Any]:
    """Check the stimuli table and decode every stimulus image; return a manifest."""
    layout = BidsLayout(Path(root), task)
    images = check_stimuli(layout, decode_images=True)
    return {"root": str(root), "n_stimuli": len(images)}


# --- events ---------------------------------------------------------------------------


def check_events(
    path: Path,
    n_scans: int,
    tr: float,
    stimuli: Mapping[str, Any],
    stimuli_table: str | Path = "the stimuli table",
) -> pd.DataFrame:
    """Check one run's events.tsv against its run length and the stimuli table."""
    text = check_text(path, "events file")
    if not text.strip():
        raise BrainpipeInputError(path, "<file>", "events file has no header and no rows")
    events = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
    if events.empty:
        raise BrainpipeInputError(path, "<file>", "events file has a header but no trials")
    for col in ("onset", "duration"):
        if col in events.columns:
            values = pd.to_numeric(events[col], errors="coerce")
            bad = ~np.isfinite(values.to_numpy(float)) & events[col].str.len().gt(0).to_numpy()
            if bad.any():
                row = int(bad.nonzero()[0][0])
                raise BrainpipeInputError(
                    path,
                    col,
                    f"row {row + 1}: expected a finite number of seconds, got "
                    f"{_show(events[col].iloc[row])}",
                )
    ordered = read_events(path)  # columns, numbers, non-negative values, stimulus ids
    raw_onsets = pd.to_numeric(events["onset"], errors="coerce").to_numpy(float)
    backwards = np.flatnonzero(np.diff(raw_onsets) < 0)
    if len(backwards):
        row = int(backwards[0]) + 1
        raise BrainpipeInputError(
            path,
            "onset",
            f"row {row + 1}: onset {raw_onsets[row]} s comes before row {row}'s "
            f"{raw_onsets[row - 1]} s; expected onsets in ascending order",
        )
    onsets = ordered["onset"].to_numpy(float)
    durations = ordered["duration"].to_numpy(float)
    same = np.flatnonzero(np.diff(onsets) <= OVERLAP_TOLERANCE_S)
    if len(same):
        row = int(same[0]) + 1
        raise BrainpipeInputError(
            path,
            "onset",
            f"rows {row} and {row + 1} are duplicate trials at onset {onsets[row]} s "
            f"(stimuli {ordered['stimulus'].iloc[row - 1]!r}, "
            f"{ordered['stimulus'].iloc[row]!r}); expected one trial per onset",
        )
    overlap = np.flatnonzero(onsets[:-1] + durations[:-1] > onsets[1:] + OVERLAP_TOLERANCE_S)
    if len(overlap):
        row = int(overlap[0]) + 1
        raise BrainpipeInputError(
            path,
            "duration",
            f"row {row}: trial {onsets[row - 1]} s + {durations[row - 1]} s overlaps the "
            f"next trial at {onsets[row]} s; expected trials that do not overlap",
        )
    late = onsets >= n_scans * tr
    if late.any():
        raise BrainpipeInputError(
            path,
            "onset",
            f"onset {_show(onsets[late][0])} s is after the run's end ({n_scans} scans x {tr} s)",
        )
    unknown = sorted(set(ordered["stimulus"]) - set(stimuli))
    if unknown:
        raise BrainpipeInputError(
            path, "stimulus", f"stimulus id {unknown[0]!r} has no image in {stimuli_table}"
        )
    return ordered


# --- subjects -------------------------------------------------------------------------


def check_subject(
    layout: BidsLayout,
    subject: str,
    sessions: list[str],
    runs: list[str] | str,
    tr: float,
    images: Mapping[str, Any],
    max_censored_fraction: float = MAX_CENSORED_FRACTION,
    parts: tuple[str, ...] = ("runs", "events"),
) -> dict[str, Any]:
    """Check one subject's brain mask, ROI masks, runs, sidecars, events and samples.

    ``parts`` selects what is checked: ``"runs"`` (brain mask, BOLD runs, sidecars,
    samples: what preprocess reads) and ``"events"`` (events tables and ROI masks: what
    the betas stage reads besides preproc.zarr; run lengths then come from the headers).
    The workflow checks them in two jobs, so editing an events file does not re-check
    (and rerun the preprocessing of) the BOLD runs.

    Returns
    -------
    dict
        ``{"n_voxels", "volume_shape", "affine", "dead_voxels" (mask-order indices),
        "rois", "runs": [{session, run, n_scans, n_trials, censored_scans}]}`` (the
        keys of the parts checked).
    """
    if layout.surface_space:
        return check_surface_subject(
            layout, subject, sessions, runs, tr, images, max_censored_fraction, parts
        )
    mask_path = layout.brain_mask(subject)
    if not mask_path.exists() and not mask_path.is_symlink():
        raise BrainpipeInputError(mask_path, "<file>", f"brain mask of sub-{subject} is missing")
    mask_img = load_nifti(mask_path, f"brain mask of sub-{subject}")
    if mask_img.ndim != 3:
        raise BrainpipeInputError(
            mask_path, "shape", f"expected a 3D mask, got shape {mask_img.shape}"
        )
    mask = np.asarray(mask_img.dataobj)
    if not np.isfinite(mask).all():
        raise BrainpipeInputError(mask_path, "<data>", "mask has non-finite values")
    mask = mask > 0
    if not mask.any():
        raise BrainpipeInputError(mask_path, "<data>", "mask selects no voxel")
    volume_shape = tuple(int(s) for s in mask.shape)
    rois = {}
    for roi in layout.available_rois(subject) if "events" in parts else []:
        roi_path = layout.roi_mask(subject, roi)
        roi_img = load_nifti(roi_path, f"ROI mask {roi} of sub-{subject}")
        _same_grid(roi_path, roi_img, mask_img, mask_path)
        inside = int(np.count_nonzero((np.asarray(roi_img.dataobj) > 0) & mask))
        if inside == 0:  # happens in published data (NSD's floc ROIs for some subjects)
            log.warning("%s: ROI %s has no voxel in sub-%s's brain mask", roi_path, roi, subject)
        rois[roi] = inside
    dead = np.zeros(int(mask.sum()), dtype=bool)
    checked_runs = []
    for key in run_keys(subject, sessions, runs, layout):
        bold_path = layout.bold(key)
        if not bold_path.exists() and not bold_path.is_symlink():
            raise BrainpipeInputError(
                bold_path,
                "<file>",
                f"run missing: sub-{subject} ses-{key.session} run-{key.run} is listed in the "
                "config (keys 'sessions' and 'runs') but has no BOLD file",
            )
        if "runs" not in parts:
            n_scans = _n_scans_from_header(bold_path)
            events = check_events(layout.events(key), n_scans, tr, images, layout.stimuli_table)
            checked_runs.append(
                {
                    "session": key.session,
                    "run": key.run,
                    "n_scans": n_scans,
                    "n_trials": len(events),
                }
            )
            continue
        check_text(layout.sidecar(key), "BOLD sidecar")
        sidecar_tr = read_tr(layout.sidecar(key))
        _check_tr(layout.sidecar(key), "RepetitionTime", sidecar_tr, tr, "the config key 'tr'")
        img = load_nifti(bold_path, f"BOLD run of sub-{subject}")
        if img.ndim != 4:
            raise BrainpipeInputError(bold_path, "shape", f"expected a 4D image, got {img.shape}")
        _same_grid(bold_path, img, mask_img, mask_path)
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
        data = np.asarray(img.dataobj, dtype=np.float32)[mask].T  # (n_scans, n_voxels)
        policy = usable_samples(data, max_censored_fraction)
        censored = np.flatnonzero(policy["censored"])
        if len(censored) > max_censored_fraction * n_scans:
            raise BrainpipeInputError(
                bold_path,
                "<data>",
                f"{len(censored)} of {n_scans} volumes have non-finite samples (first: scan "
                f"{int(censored[0])}); at most {max_censored_fraction:.0%} can be censored",
            )
        dead |= policy["dead"]
        del data
        checked = {"session": key.session, "run": key.run, "n_scans": n_scans}
        if "events" in parts:
            events = check_events(layout.events(key), n_scans, tr, images, layout.stimuli_table)
            checked["n_trials"] = len(events)
        checked_runs.append({**checked, "censored_scans": [int(s) for s in censored]})
    if dead.all():
        raise BrainpipeInputError(
            mask_path,
            "<data>",
            f"every one of the {dead.size} voxels of sub-{subject}'s mask is dead (constant or "
            "non-finite in a run); expected a time series that varies",
        )
    manifest: dict[str, Any] = {
        "n_voxels": int(mask.sum()),
        "volume_shape": list(volume_shape),
        "affine": np.round(mask_img.affine, 6).tolist(),
        "runs": checked_runs,
    }
    if "runs" in parts:
        manifest["dead_voxels"] = [int(v) for v in np.flatnonzero(dead)]
    if "events" in parts:
        manifest["rois"] = rois
    return manifest


def check_surface_subject(
    layout: BidsLayout,
    subject: str,
    sessions: list[str],
    runs: list[str] | str,
    tr: float,
    images: Mapping[str, Any],
    max_censored_fraction: float = MAX_CENSORED_FRACTION,
    parts: tuple[str, ...] = ("runs", "events"),
) -> dict[str, Any]:
    """:func:`check_subject` for a surface dataset (fMRIPrep's fsaverage GIFTI runs).

    Every run's two hemispheres decode (:func:`brainpipe.surface.load_gifti_series`), have
    the space's vertex count and as many volumes as each other; the same input policy as
    volumes applies to the vertices (``dead_voxels``: indices over both hemispheres, left
    first; fMRIPrep leaves the medial wall constant, so it is dropped); the ROI masks of
    the data view decode and have the space's vertex count.
    """
    from brainpipe.surface import (
        FSAVERAGE_VERTICES,
        HEMIS,
        expected_vertices,
        gifti_header,
        load_gifti_series,
        read_vertex_mask,
    )

    space = str(layout.surface_space)
    per_hemi = FSAVERAGE_VERTICES[space]
    n_total = 2 * per_hemi
    rois = {}
    for roi in layout.available_rois(subject) if "events" in parts else []:
        inside = 0
        for h in HEMIS:
            path = layout.surface_roi(subject, roi, h)
            check_file(path, f"ROI mask {roi} ({h}) of sub-{subject}")
            mask = read_vertex_mask(path, f"ROI mask {roi} ({h}) of sub-{subject}")
            expected_vertices(space, path, mask.size)
            inside += int(mask.sum())
        if inside == 0:
            log.warning("ROI %s has no vertex for sub-%s", roi, subject)
        rois[roi] = inside
    dead = np.zeros(n_total, dtype=bool)
    checked_runs = []
    for key in run_keys(subject, sessions, runs, layout):
        paths = {h: layout.surface_bold(key, h) for h in HEMIS}
        for h, path in paths.items():
            if not path.exists() and not path.is_symlink():
                raise BrainpipeInputError(
                    path, "<file>", f"run missing: sub-{subject} ses-{key.session} run-{key.run} "
                    f"has no {h} hemisphere on {space} (config keys 'sessions' and 'runs')",
                )  # fmt: skip
            check_file(path, f"{h} hemisphere of a run of sub-{subject}")
        if "runs" not in parts:
            n_scans = gifti_header(paths["L"])[0]
            events = check_events(layout.events(key), n_scans, tr, images, layout.stimuli_table)
            checked_runs.append(
                {"session": key.session, "run": key.run, "n_scans": n_scans,
                 "n_trials": len(events)}
            )  # fmt: skip
            continue
        check_text(layout.sidecar(key), "BOLD sidecar")
        _check_tr(
            layout.sidecar(key), "RepetitionTime", read_tr(layout.sidecar(key)), tr,
            "the config key 'tr'",
        )  # fmt: skip
        hemis = []
        for h, path in paths.items():
            series = load_gifti_series(path, f"{h} hemisphere of sub-{subject}")
            expected_vertices(space, path, series.shape[1])
            if hemis and series.shape[0] != hemis[0].shape[0]:
                raise BrainpipeInputError(
                    path, "DataArray", f"{series.shape[0]} volumes; the left hemisphere has "
                    f"{hemis[0].shape[0]}",
                )  # fmt: skip
            hemis.append(series)
        data = np.concatenate(hemis, axis=1)
        del hemis
        n_scans = int(data.shape[0])
        policy = usable_samples(data, max_censored_fraction)
        censored = np.flatnonzero(policy["censored"])
        if len(censored) > max_censored_fraction * n_scans:
            raise BrainpipeInputError(
                paths["L"], "<data>",
                f"{len(censored)} of {n_scans} volumes have non-finite samples (first: scan "
                f"{int(censored[0])}); at most {max_censored_fraction:.0%} can be censored",
            )  # fmt: skip
        dead |= policy["dead"]
        del data
        checked = {"session": key.session, "run": key.run, "n_scans": n_scans}
        if "events" in parts:
            events = check_events(layout.events(key), n_scans, tr, images, layout.stimuli_table)
            checked["n_trials"] = len(events)
        checked_runs.append({**checked, "censored_scans": [int(s) for s in censored]})
    if "runs" in parts and dead.all():
        raise BrainpipeInputError(
            layout.surface_bold(run_keys(subject, sessions, runs, layout)[0], "L"), "<data>",
            f"every one of the {n_total} vertices of sub-{subject} is dead (constant or "
            "non-finite in a run); expected a time series that varies",
        )  # fmt: skip
    manifest: dict[str, Any] = {
        "n_voxels": n_total,
        "surface": space,
        "n_vertices": {fs: per_hemi for fs in HEMIS.values()},
        "runs": checked_runs,
    }
    if "runs" in parts:
        manifest["dead_voxels"] = [int(v) for v in np.flatnonzero(dead)]
    if "events" in parts:
        manifest["rois"] = rois
    return manifest


def _n_scans_from_header(path: Path) -> int:
    """A BOLD run's length from its header alone (its data is checked by the runs part)."""
    check_file(path, "BOLD run")
    try:
        shape = nib.load(path).shape
    except Exception as err:  # nibabel raises several types for a bad header
        raise BrainpipeInputError(
            path, "<header>", f"not a readable NIfTI-1 file ({err})"
        ) from None
    if len(shape) != 4:
        raise BrainpipeInputError(path, "shape", f"expected a 4D image, got {shape}")
    return int(shape[3])


def _check_tr(source: Path, field: str, found: float, expected: float, expected_from: str) -> None:
    if not np.isclose(found, expected, rtol=TR_RTOL):
        raise BrainpipeInputError(
            source, field, f"TR is {found} s but {expected_from} says {expected} s"
        )


def validate_subject(
    root: str | Path,
    subject: str,
    sessions: list[str],
    runs: list[str] | str,
    tr: float,
    task: str = "images",
    max_censored_fraction: float = MAX_CENSORED_FRACTION,
    parts: tuple[str, ...] = ("runs", "events"),
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
    max_censored_fraction : float
        Largest fraction of a run's volumes the policy may censor.
    parts : tuple of str
        ``"runs"`` and/or ``"events"`` (see :func:`check_subject`).

    Raises
    ------
    BrainpipeInputError
        At the first problem, naming the file and the field.
    """
    layout = BidsLayout(Path(root), task)
    images = check_stimuli(layout, decode_images=False) if "events" in parts else {}
    manifest = check_subject(
        layout, subject, sessions, runs, tr, images, max_censored_fraction, parts
    )
    return {"root": str(root), "subject": subject, "n_stimuli": len(images), **manifest}


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


def write_manifest(manifest: Mapping[str, Any], path: str | Path) -> Path:
    """Write a manifest as JSON, atomically (its content depends on the inputs only)."""
    from brainpipe.storage import write_text_atomic

    return write_text_atomic(json.dumps(manifest, indent=1, sort_keys=True), path)


# --- config against the dataset (DAG build) -------------------------------------------


def _check_positive_list(key: str, values: Any) -> None:
    for n, value in enumerate(values if isinstance(values, list | tuple) else [values]):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise BrainpipeInputError(
                "config", f"{key}.{n}", f"got {_show(value)}; expected a number > 0 (a penalty)"
            )


def check_config_against_dataset(
    config: Mapping[str, Any],
    dataset_rois: list[str] | None,
    n_shared: int | None,
) -> None:
    """Check config values that only make sense against the dataset and the model registry.

    Called while the DAG is built, so a bad value stops the workflow before any job.

    Parameters
    ----------
    config : mapping
        The workflow config (already schema-valid).
    dataset_rois : list of str or None
        ROI names the dataset provides (None: unknown before download; not checked).
    n_shared : int or None
        Number of shared stimuli (the test split's source; None: unknown).

    Raises
    ------
    BrainpipeInputError
        Naming the config key, the value and what was expected.
    """
    from brainpipe.models import get_model, model_params

    if dataset_rois is not None:
        known = sorted(dataset_rois)

        def check_rois(key: str, rois: Any) -> None:
            for n, roi in enumerate(rois if isinstance(rois, list) else [rois]):
                if roi != "all" and roi not in known:
                    raise BrainpipeInputError(
                        "config",
                        f"{key}.{n}" if isinstance(rois, list) else key,
                        f"ROI {roi!r} is not in dataset {config['dataset']!r} (it has {known})",
                    )

        check_rois("rois", list(config.get("rois") or []))
        check_rois("align.roi", (config.get("align") or {}).get("roi", []))
    for name in config.get("models") or []:
        get_model(name)
        params = model_params(name, config)
        if dataset_rois is not None:
            block = (config.get("model_params") or {}).get(name) or {}
            if "rois" in block:
                check_rois(f"model_params.{name}.rois", list(block["rois"]))
        for key, value in params.items():
            where = f"model_params.{name}.{key}"
            if key.endswith("alphas"):
                _check_positive_list(where, value)
            elif key in ("n_folds",) and (not isinstance(value, int) or value < 2):
                raise BrainpipeInputError("config", where, f"got {_show(value)}; expected >= 2")
            elif key in ("epochs", "batch_size", "finetune_epochs") and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise BrainpipeInputError(
                    "config", where, f"got {_show(value)}; expected a whole number >= 0"
                )
    ridge = config.get("ridge") or {}
    if "alphas" in ridge:
        _check_positive_list("ridge.alphas", ridge["alphas"])
    fraction = (config.get("splits") or {}).get("shared_train_fraction")
    if fraction is None:
        fraction = schema_default("splits.shared_train_fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise BrainpipeInputError(
            "config", "splits.shared_train_fraction", f"got {_show(fraction)}; expected a number"
        )
    if not 0.0 <= fraction < 1.0:
        raise BrainpipeInputError(
            "config",
            "splits.shared_train_fraction",
            f"got {_show(fraction)}; expected 0 <= value < 1 (shared stimuli are the test split)",
        )
    if n_shared is not None:
        n_test = n_shared - int(round(fraction * n_shared))
        if n_test < 2:
            raise BrainpipeInputError(
                "config",
                "splits.shared_train_fraction",
                f"{_show(fraction)} of the {n_shared} shared stimuli go to training, leaving "
                f"{n_test} test stimuli; expected at least 2 (scores need a test split)",
            )
