"""Reading NSD's betas HDF5 files: ``/betas`` int16 ``(750, K, J, I)`` at the kept voxels.

MATLAB wrote the files, so HDF5 (C order) sees the NIfTI axes reversed: voxel
``(i, j, k)`` of the NIfTI volumes is ``betas[t, k, j, i]`` (:func:`hdf5_voxel_index`).
NSD's own layout (one chunk per voxel) is read by :mod:`.nsd_chunks`; contiguous files
through memory maps; anything else through h5py in trial slabs.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from brainpipe.datasets.nsd_chunks import read_chunked_voxels, voxel_chunk_addresses
from brainpipe.datasets.nsd_layout import BETA_SCALE, TRIALS_PER_SESSION
from brainpipe.errors import BrainpipeInputError

log = logging.getLogger(__name__)

#: Voxels whose trials one buffer of the chunked read holds (two buffers alternate):
#: 2 × 131,072 × 750 × 2 bytes = 375 MB, a 1.8 mm session (~270k kept voxels) in two
#: passes, a 1 mm session in a few more; each pass reads only its voxels' chunks.
CHUNKED_GROUP_VOXELS = 1 << 17


def hdf5_voxel_index(ijk: np.ndarray, volume_shape: tuple[int, int, int]) -> np.ndarray:
    """Flat indices into a MATLAB-written ``(K, J, I)`` volume of NIfTI voxels ``(i, j, k)``.

    Parameters
    ----------
    ijk : ndarray of int, shape (n_voxels, 3)
        NIfTI voxel indices.
    volume_shape : (I, J, K)
        NIfTI volume shape, e.g. (81, 104, 83).

    Returns
    -------
    ndarray of int64, shape (n_voxels,)
        Index into ``betas[t].reshape(-1)`` where ``betas[t]`` has shape (K, J, I).
    """
    ni, nj, nk = volume_shape
    return np.ravel_multi_index((ijk[:, 2], ijk[:, 1], ijk[:, 0]), (nk, nj, ni))


class KeptVoxels:
    """Gathers the kept voxels of MATLAB-written volumes, in the store's voxel order.

    The store's order (C order of the NIfTI volume) strides across each HDF5 volume
    (C order of its transpose), so gathering it directly misses the cache at almost
    every voxel. Reading the kept voxels in file order, then putting them in the
    store's order within the much smaller row of kept voxels, takes 0.7–0.8× the time
    of one ``np.take`` (``benchmarks/gather.py``).

    Parameters
    ----------
    flat : ndarray of int, shape (n_voxels,)
        From :func:`hdf5_voxel_index`, in the store's order.
    """

    def __init__(self, flat: np.ndarray) -> None:
        flat = np.asarray(flat, dtype=np.intp)
        order = np.argsort(flat, kind="stable")
        self.file_order = flat[order]
        self.to_store = np.empty_like(order)
        self.to_store[order] = np.arange(len(order))
        self._rows: tuple[np.ndarray, np.ndarray] | None = None  # row()'s buffers

    def gather(self, slab: np.ndarray, out: np.ndarray) -> None:
        """Kept voxels of each volume of ``slab`` (n, K*J*I) into ``out`` (n, n_voxels).

        Safe to call from several threads at once (its own scratch row per call).
        """
        kept = np.empty(len(self.file_order), slab.dtype)
        for volume, row in zip(slab, out, strict=True):
            # indices are in range by construction: "clip" skips numpy's buffered check
            np.take(volume, self.file_order, out=kept, mode="clip")
            np.take(kept, self.to_store, out=row, mode="clip")

    def row(self, volume: np.ndarray) -> np.ndarray:
        """Kept voxels of one int16 volume, in a buffer reused by the next call (one thread)."""
        if self._rows is None:
            n = len(self.file_order)
            self._rows = (np.empty(n, np.int16), np.empty(n, np.int16))
        kept, row = self._rows
        np.take(volume, self.file_order, out=kept, mode="clip")
        return np.take(kept, self.to_store, out=row, mode="clip")


def read_session_betas(
    path: Path, flat: np.ndarray, shape: tuple[int, int, int], trial_batch: int = 50
) -> np.ndarray:
    """One session's betas at the kept voxels, in % signal change.

    Parameters
    ----------
    path : Path
        ``betas_sessionNN.hdf5`` with ``/betas`` int16 of shape ``(750, K, J, I)``.
    flat : ndarray, shape (n_voxels,)
        From :func:`hdf5_voxel_index`.
    shape : (I, J, K)
        NIfTI volume shape.

    Returns
    -------
    ndarray of float32, shape (750, n_voxels)
    """
    raw = read_session_int16(path, flat, shape, trial_batch)
    return np.divide(raw, BETA_SCALE, dtype=np.float32)


def read_session_int16(
    path: Path,
    flat: np.ndarray,
    shape: tuple[int, int, int],
    trial_batch: int = 50,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One session's raw int16 betas (×300) at the kept voxels, shape (750, n_voxels).

    Reads ``/betas`` in contiguous slabs of ``trial_batch`` trials into one reused
    buffer and gathers the kept voxels into ``out`` (allocated if not given), so
    memory is ``out`` plus one slab whatever the session count.

    Raises
    ------
    BrainpipeInputError
        The file is missing or unreadable, or ``/betas`` is not int16 ``(750, K, J, I)``.
    """
    want = (TRIALS_PER_SESSION, *shape[::-1])
    with open_betas(path, shape) as dset:
        if out is None:
            out = np.empty((TRIALS_PER_SESSION, len(flat)), dtype=np.int16)
        addresses = None
        if contiguous_offset(dset) is None:
            addresses = voxel_chunk_addresses(dset, path)
        if addresses is not None:  # one chunk per voxel: read them in file order
            for v0 in range(0, len(flat), CHUNKED_GROUP_VOXELS):
                v1 = min(len(flat), v0 + CHUNKED_GROUP_VOXELS)
                group = np.empty((v1 - v0, TRIALS_PER_SESSION), np.int16)
                read_chunked_voxels(path, addresses[flat[v0:v1]], group, fill=dset.fillvalue)
                out[:, v0:v1] = group.T
            return out
        batch = max(1, min(trial_batch, TRIALS_PER_SESSION))
        local = threading.local()
        kept = KeptVoxels(flat)

        def gather(t0: int) -> None:
            n = min(batch, TRIALS_PER_SESSION - t0)
            slab = getattr(local, "slab", None)
            if slab is None:
                slab = local.slab = scratch_array((batch, *want[1:]), np.int16)
            dset.read_direct(slab, np.s_[t0 : t0 + n], np.s_[0:n])
            kept.gather(slab[:n].reshape(n, -1), out[t0 : t0 + n])

        # HDF5 reads are serialised by h5py's lock; the gathers (no GIL) run side by side.
        with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            for fut in [pool.submit(gather, t0) for t0 in range(0, TRIALS_PER_SESSION, batch)]:
                fut.result()
    return out


def open_betas(path: Path, shape: tuple[int, int, int]) -> Any:
    """``/betas`` of a session file, checked to be int16 ``(750, K, J, I)``.

    Returns the h5py dataset; use as a context manager (closes the file).
    """
    if not path.exists():
        raise BrainpipeInputError(path, "<file>", "betas file is missing (run the download)")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise BrainpipeInputError(path, "<file>", f"not a readable HDF5 file ({err})") from err
    try:
        dset = check_betas(h5, path, shape)
    except BrainpipeInputError:
        h5.close()
        raise
    return _ClosingDataset(h5, dset)


def check_betas(h5: Any, where: str | Path, shape: tuple[int, int, int]) -> Any:
    """``h5["betas"]``, checked to be int16 ``(750, K, J, I)`` for a volume ``(I, J, K)``."""
    want = (TRIALS_PER_SESSION, *shape[::-1])
    if "betas" not in h5 or not isinstance(h5["betas"], h5py.Dataset):
        raise BrainpipeInputError(where, "betas", "dataset is missing")
    dset = h5["betas"]
    if dset.shape != want or dset.dtype != np.int16:
        got = f"{dset.dtype} {dset.shape}"
        raise BrainpipeInputError(
            where, "betas", f"expected int16 {want} (trials, K, J, I), got {got}"
        )
    return dset


class _ClosingDataset:
    def __init__(self, h5: Any, dset: Any) -> None:
        self.h5, self.dset = h5, dset

    def __enter__(self) -> Any:
        return self.dset

    def __exit__(self, *exc: object) -> None:
        self.h5.close()


def contiguous_offset(dset: Any) -> int | None:
    """File offset of ``/betas`` if it is stored contiguous and unfiltered, else None.

    Such a dataset can be read through a memory map of the file, without a copy (the
    bytes come straight from the page cache); chunked or compressed datasets are read
    through h5py.
    """
    offset = dset.id.get_offset()
    if (
        offset is None
        or dset.chunks is not None
        or dset.id.get_create_plist().get_nfilters()
        or dset.id.get_storage_size() != dset.size * dset.dtype.itemsize
    ):
        return None
    return int(offset)


def scratch_array(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A large scratch array in plain anonymous memory.

    numpy advises transparent huge pages for big arrays; where the kernel then
    compacts memory on first touch (``defrag=madvise``) that stalls for seconds
    per GB. Page-sized anonymous memory avoids the stall; it is freed with the array.
    Private, not shared (``mmap``'s default): shared anonymous pages are shmem, and
    faulting them in cost ~1.7x as much kernel time (0.29 s against 0.17 s for an NSD
    session's 393 MB buffer).
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < 1 << 22:
        return np.empty(shape, dtype)
    private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=private), dtype=dtype).reshape(shape)
