"""A read-only, seekable file over an object, read with HTTP range requests.

h5py opens Python file objects, so ``h5py.File(RangeFile(source, key))`` reads
only the HDF5 blocks a selection touches — e.g. a few images of NSD's 40 GB
stimulus brick — never the whole object.
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict

from brainpipe.remote.source import S3Source, is_retryable


class SizedReader(io.RawIOBase):
    """A read-only, seekable file of known ``size``; subclasses implement ``readinto``.

    What h5py needs of a Python file object besides reading: position, seeking
    (from the start, the current position or the end) and the size.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size, self._pos = size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos


class RangeFile(SizedReader):
    """Seekable read-only view of ``s3://bucket/key``.

    Parameters
    ----------
    source : S3Source
    key : str
    block_size : int
        Bytes per range request; reads are aligned to blocks and cached.
    cache_blocks : int
        Blocks kept in an LRU cache (memory bound: ``block_size * cache_blocks``).
    retries : int
        Attempts per range request (exponential backoff).
    """

    def __init__(
        self, source: S3Source, key: str, block_size: int = 1 << 20, cache_blocks: int = 64,
        retries: int = 5,
    ) -> None:  # fmt: skip
        info = source.head(key)
        super().__init__(info.size)
        self.source, self.key, self.etag = source, key, info.etag
        self.block_size, self.cache_blocks, self.retries = block_size, cache_blocks, retries
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self.requests = 0  # range requests made (for tests and logs)

    def _block(self, n: int) -> bytes:
        if n in self._cache:
            self._cache.move_to_end(n)
            return self._cache[n]
        start = n * self.block_size
        end = min(self.size, start + self.block_size)
        for attempt in range(self.retries):
            try:
                self.requests += 1
                data = self.source.get(self.key, start, end, etag=self.etag).read()
                if len(data) != end - start:
                    raise ConnectionError(f"short read: {len(data)} of {end - start} bytes")
                break
            except Exception as err:  # noqa: BLE001 - classified below
                if attempt + 1 == self.retries or not is_retryable(err):
                    raise self.source.translate(err, self.key) from err
                time.sleep(0.2 * 2**attempt)
        self._cache[n] = data
        if len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)
        return data

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self.size - self._pos))
        done = 0
        while done < want:
            n, off = divmod(self._pos + done, self.block_size)
            block = self._block(n)
            take = min(want - done, len(block) - off)
            view[done : done + take] = block[off : off + take]
            done += take
        self._pos += done
        return done

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self._pos
        buf = bytearray(max(0, min(size, self.size - self._pos)))
        n = self.readinto(buf)
        return bytes(buf[:n])
