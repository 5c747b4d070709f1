"""Writing large files around the page cache (``O_DIRECT``), with a buffered fallback.

Bytes written once and not read again soon — a downloaded file already consumed as it
arrived, the betas chunks an ingest writes for later jobs — need not pass through the
page cache. Filling it costs kernel time for every new page (on virtual machines whose
free memory goes back to the host, well over a second per GB) and evicts what other jobs
have cached. ``O_DIRECT`` needs the file offset, the length and the buffer aligned to
:data:`ALIGN`; these helpers stage bytes in page-aligned buffers, pad the last block and
truncate the file to its true size. Where the file system refuses ``O_DIRECT`` (tmpfs,
some network file systems) they write through the page cache instead.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

#: Offset, length and buffer alignment O_DIRECT needs (the largest common block size).
ALIGN = 4096
#: Bytes staged per O_DIRECT write by :class:`Appender`.
STAGE = 8 << 20
#: Values at least this big are written by :class:`DirectWriteStore` with O_DIRECT.
DIRECT_STORE_MIN = 1 << 20

_local = threading.local()


def _open_direct(path: Path, flags: int) -> int | None:
    """A file descriptor opened with O_DIRECT, or None where that is not possible."""
    if not hasattr(os, "O_DIRECT"):
        return None
    try:
        return os.open(path, flags | os.O_DIRECT, 0o644)
    except OSError:
        return None


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class Appender:
    """Appends bytes to a file; with ``direct``, around the page cache.

    Bytes are staged in two page-aligned buffers: while one is written with
    ``O_DIRECT`` on a background thread (a synchronous O_DIRECT write would hold the
    caller — e.g. a network read loop — for the disk's time), the other fills. Closing
    writes the staged rest (padded to :data:`ALIGN`), then truncates the file to its
    true size. A file of unaligned size (an earlier attempt's end) is continued by
    re-staging its last partial block. Every byte passed to :meth:`write` is in the file
    once the appender is closed, also when it is closed by an exception. Where a write
    is refused, the appender goes on with buffered writes.
    """

    def __init__(self, path: Path, direct: bool = True) -> None:
        self.path, self.fh = Path(path), None
        self.fd = _open_direct(self.path, os.O_WRONLY | os.O_CREAT) if direct else None
        if self.fd is None:
            self.fh = open(self.path, "ab")  # noqa: SIM115 - closed by close()
            return
        size = os.fstat(self.fd).st_size
        self.pos = size - size % ALIGN  # file offset of the staged bytes
        self.stages = [mmap.mmap(-1, STAGE), mmap.mmap(-1, STAGE)]  # page-aligned
        self.stage = self.stages[0]
        self.fill = size - self.pos
        self.pending: tuple[Future, memoryview, int, int] | None = None
        self.pool = ThreadPoolExecutor(max_workers=1)
        if self.fill:
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                self.stage[: self.fill] = fh.read(self.fill)

    def __enter__(self) -> Appender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, chunk: bytes | memoryview) -> None:
        """Append ``chunk``."""
        view = memoryview(chunk).cast("B")
        while len(view) and self.fh is None:
            take = min(len(view), STAGE - self.fill)
            self.stage[self.fill : self.fill + take] = view[:take]
            self.fill += take
            view = view[take:]
            if self.fill == STAGE:
                self._submit(STAGE)
        if len(view):
            self.fh.write(view)

    def _submit(self, length: int) -> None:
        """Write the stage's first ``length`` bytes in the background; switch stages."""
        self._wait()
        if self.fh is not None:  # the previous write was refused: go on buffered
            self.fh.write(memoryview(self.stage)[: self.fill])
            self.fill = 0
            return
        stage, pos = self.stage, self.pos
        view = memoryview(stage)[:length]
        self.pending = (self.pool.submit(os.pwrite, self.fd, view, pos), view, pos, self.fill)
        self.stage = self.stages[1] if stage is self.stages[0] else self.stages[0]
        self.pos += self.fill
        self.fill = 0

    def _wait(self) -> None:
        """Wait for the background write; on refusal, rewrite from there buffered."""
        if self.pending is None:
            return
        future, view, pos, nbytes = self.pending
        self.pending = None
        try:
            future.result()
        except OSError:  # O_DIRECT accepted at open but refused on write
            os.close(self.fd)
            self.fd = None
            self.fh = open(self.path, "r+b")  # noqa: SIM115 - closed by close()
            self.fh.seek(pos)
            self.fh.truncate()
            self.fh.write(view[:nbytes])
        finally:
            view.release()  # the stage can be reused (and closed)

    def close(self) -> None:
        """Write what is staged and close the file (idempotent)."""
        if self.fd is not None or getattr(self, "pool", None) is not None:
            try:
                if self.fd is not None and self.fill:
                    end = self.pos + self.fill
                    self._submit(_aligned(self.fill))
                    self._wait()
                    if self.fd is not None:
                        os.ftruncate(self.fd, end)
                else:
                    self._wait()
            finally:
                self.pool.shutdown(wait=True)
                self.pool = None
                if self.fd is not None:
                    os.close(self.fd)
                    self.fd = None
                for stage in self.stages:
                    stage.close()
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _address(view: memoryview) -> int:
    """Memory address of a buffer's first byte."""
    import numpy as np

    return int(np.frombuffer(view, np.uint8).ctypes.data) if len(view) else 0


def write_file_direct(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` as the whole of ``path`` (atomically: temporary name, then rename).

    Uses O_DIRECT through a per-thread page-aligned buffer (reused: no fresh memory per
    file); buffered where the file system refuses it.
    """
    view = memoryview(data).cast("B")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        wrote = False
        fd = _open_direct(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        if fd is not None:
            try:
                if len(view) % ALIGN == 0 and _address(view) % ALIGN == 0:
                    os.pwrite(fd, view, 0)  # aligned already (e.g. a mapped buffer): no copy
                else:
                    buf = getattr(_local, "buf", None)
                    if buf is None or len(buf) < _aligned(len(view)):
                        buf = _local.buf = mmap.mmap(-1, max(_aligned(len(view)), ALIGN))
                    buf[: len(view)] = view
                    os.pwrite(fd, memoryview(buf)[: _aligned(len(view))], 0)
                os.ftruncate(fd, len(view))
                wrote = True
            except OSError:
                pass  # refused on write: buffered below
            finally:
                os.close(fd)
        if not wrote:
            with open(tmp, "wb") as fh:
                fh.write(view)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def __getattr__(name: str) -> Any:
    # DirectWriteStore is made on first use: importing zarr (~0.2 s) is no cost of the
    # downloads (Appender), which import this module without writing any store
    if name == "DirectWriteStore":
        return _direct_write_store()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _direct_write_store() -> type:
    from zarr.core.buffer import Buffer
    from zarr.storage import LocalStore

    class DirectWriteStore(LocalStore):
        """A Zarr :class:`~zarr.storage.LocalStore` that writes big values around the page cache.

        Values of at least :data:`DIRECT_STORE_MIN` bytes (uncompressed chunks of a large
        array) go through :func:`write_file_direct`; metadata and small values are written
        as LocalStore writes them. Reading is LocalStore's. Use it for stores written once
        and read by later jobs, e.g. ``zarr.open_group(DirectWriteStore(path), mode="w")``.
        """

        async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
            if exclusive or len(value) < DIRECT_STORE_MIN:
                return await super()._set(key, value, exclusive=exclusive)
            if not self._is_open:
                await self._open()
            self._check_writable()
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(write_file_direct, path, value.as_buffer_like())

    return DirectWriteStore
