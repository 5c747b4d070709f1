"""The storage contract: labelled xarray datasets in chunked Zarr stores, written atomically.

Every store is written to a temporary sibling path and renamed into place only
once it is complete, so a killed job never leaves a store that looks finished.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # xarray (and Dask behind it) is imported by the functions that use it
    import xarray as xr

from brainpipe import __version__


def config_hash(config: Mapping[str, Any]) -> str:
    """Short, stable hash of a (JSON-serialisable) config mapping."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def provenance_attrs(config: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Attributes every store carries: package version and config hash."""
    return {
        "brainpipe_version": __version__,
        "config_hash": config_hash(config or {}),
    }


@contextmanager
def quiet_consolidated():
    """Silence zarr's notice that consolidated metadata is outside the v3 spec.

    We keep consolidated metadata because it makes opening a store one read,
    which matters on object stores; zarr-python reads and writes it fine.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        # NSD betas are stored as int16 through numcodecs' FixedScaleOffset (exact: NSD
        # ships them as int16 x 300); zarr-python reads it, zarr notes it is not core v3
        warnings.filterwarnings("ignore", message="Numcodecs codecs", category=UserWarning)
        yield


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling of ``path``; rename it onto ``path`` on success.

    On any exception the temporary path is removed and ``path`` is left as it
    was. Works for files and directories (Zarr stores). Temporaries of ``path`` left by
    a killed earlier attempt are removed first (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if path.exists():
            _remove(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.tmp-*`` siblings of ``path`` that a killed job left behind.

    Only the job that writes ``path`` calls this (Snakemake runs one job per output
    at a time and locks the working directory), so no live writer owns them. A
    killed write of a store can leave many GB there; the rerun cleans it up.

    Returns
    -------
    list of Path
        What was removed.
    """
    path = Path(path)
    removed = []
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        _remove(stale)
        removed.append(stale)
    if removed:
        logging.getLogger(__name__).warning(
            "removed %d stale temporary cop%s of %s left by an interrupted job: %s",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            path,
            ", ".join(p.name for p in removed),
        )
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def portable_strings(ds: xr.Dataset) -> xr.Dataset:
    """Store text as variable-length strings, the string type the Zarr v3 spec defines.

    Fixed-width numpy unicode (``<U7``) has no Zarr v3 specification; other
    readers may not open it.
    """
    fixed = [name for name, var in ds.variables.items() if var.dtype.kind == "U"]
    return ds.assign({name: ds[name].astype(object) for name in fixed}) if fixed else ds


def write_zarr(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to the Zarr store ``path`` atomically.

    Chunking is taken from each variable's ``encoding["chunks"]`` or its Dask
    chunks; attrs must be JSON-serialisable.
    """
    with atomic_path(path) as tmp, quiet_consolidated():
        portable_strings(ds).to_zarr(tmp, mode="w", consolidated=True, zarr_format=3)
    return Path(path)


def open_zarr(path: str | os.PathLike) -> xr.Dataset:
    """Open a store written by :func:`write_zarr` lazily (Dask-backed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: Zarr store does not exist")
    import xarray as xr

    with quiet_consolidated():
        ds = xr.open_zarr(path, consolidated=True)
    # Zarr v3 strings come back as numpy's StringDType, which much of numpy and
    # pandas cannot cast yet; labels are small, so hand them out as plain str.
    text = [name for name, var in ds.coords.items() if var.dtype.kind == "T"]
    return ds.assign_coords(
        {
            name: (ds[name].dims, np.asarray(ds[name].values, dtype=object).astype(str))
            for name in text
        }
    )


def read_npy_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Read a ``.npy`` file's magic and header from the open binary ``fh``.

    Returns ``(shape, fortran_order, dtype)`` with ``fh`` left at the first data byte.
    Raises ``ValueError`` (numpy's) when ``fh`` is not a ``.npy`` file.
    """
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)
