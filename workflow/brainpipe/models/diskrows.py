"""A float32 matrix kept on disk and read a few rows at a time (out-of-core training rows).

The shared backbone's pretraining visits every pretraining subject's training trials in
shuffled mini-batches; at NSD scale each subject's z-scored training betas are 1.6 GB
(27,000 trials x 15,000 voxels, float32), so holding them all in memory grows the job
with the number of subjects. :class:`DiskRows` holds them in an uncompressed ``.npy``
file in a scratch folder instead: a row is one contiguous run of bytes, so a random
mini-batch is one ``pread`` per row. The betas store itself is no substitute: its
chunks are a session of trials x thousands of voxels, compressed, so a random row
would decompress a whole chunk.

Rows are read with ``os.preadv`` into a fresh buffer, not through a memory map: the
pages read stay in the page cache (reclaimable, shared), not in the process's resident
memory, which is what a job's ``mem_mb`` bounds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from brainpipe.storage import atomic_path, read_npy_header


class DiskRows:
    """Rows of a 2-D float32 ``.npy`` file, read on demand.

    Parameters
    ----------
    path : path
        An ``.npy`` file of a C-ordered 2-D float32 array (:meth:`write` makes one).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            shape, fortran, dtype = read_npy_header(f)
            self.offset = f.tell()
        if len(shape) != 2 or fortran or np.dtype(dtype) != np.float32:
            raise ValueError(f"{self.path}: expected a C-ordered 2-D float32 array")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.row_bytes = self.shape[1] * 4
        self._fd: int | None = None

    @classmethod
    def write(cls, path: str | os.PathLike, array: np.ndarray) -> DiskRows:
        """Write ``array`` (2-D, float32) to ``path`` atomically and return its reader."""
        if array.ndim != 2 or array.dtype != np.float32:
            raise ValueError("DiskRows.write expects a 2-D float32 array")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))  # no copy of a C-ordered array
        return cls(path)

    def __len__(self) -> int:
        return self.shape[0]

    def _fileno(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (any order, repeats allowed), shape ``(len(rows), n_cols)``."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row out of range for {self.path} with {self.shape[0]} rows")
        fd = self._fileno()
        for i, r in enumerate(rows.tolist()):
            got = os.preadv(fd, [out[i]], self.offset + r * self.row_bytes)
            if got != self.row_bytes:
                raise OSError(f"{self.path}: short read of row {r} ({got} bytes)")
        return out

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        """Consecutive blocks of at most ``size`` rows, in order (one read per block)."""
        step = max(1, int(size))
        fd = self._fileno()
        for r0 in range(0, self.shape[0], step):
            out = np.empty((min(step, self.shape[0] - r0), self.shape[1]), dtype=np.float32)
            view, done = memoryview(out).cast("B"), 0
            while done < len(view):  # one call reads at most ~2 GB
                got = os.preadv(fd, [view[done:]], self.offset + r0 * self.row_bytes + done)
                if got <= 0:
                    raise OSError(f"{self.path}: short read at row {r0}")
                done += got
            yield out

    def close(self) -> None:
        """Close the file (reading again reopens it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()
