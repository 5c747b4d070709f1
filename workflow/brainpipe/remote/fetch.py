"""Resumable, verified, retried, parallel and atomic object downloads with a manifest.

A transfer writes ``<file>.part`` and continues it with a ``Range`` request
after any interruption (a dropped connection, a killed process); the request is
conditional on the ETag, so bytes of two object versions are never spliced.
A finished ``.part`` is checked (size, and the MD5 the ETag encodes) before it
is renamed onto its final name, so a file under its final name is always
complete. A file that fails the check is fetched again from scratch.

A transfer can also hand its bytes, in order, to a :class:`ByteSink` as they
arrive (e.g. to convert a file while it downloads instead of reading it back
afterwards). The sink sees exactly the bytes of the final file: those of a
resumed ``.part`` are replayed to it first, and it is reset whenever the
transfer starts over; its result counts only once the file has verified.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from brainpipe.config import schema_default
from brainpipe.directio import Appender
from brainpipe.remote.errors import RemoteAccessError, RemoteIntegrityError
from brainpipe.remote.keys import safe_local_path
from brainpipe.remote.source import ObjectInfo, S3Source, is_retryable
from brainpipe.storage import write_text_atomic

log = logging.getLogger(__name__)

#: Name of the manifest written in the destination folder.
MANIFEST_NAME = ".brainpipe-fetch-manifest.json"
#: Bytes per read from the network: 4 MB, not 1 MB, a quarter of the per-read Python work
#: and thread hand-offs (hashing, a sink) of a 1 GB stream (-0.3 s measured with
#: benchmarks/ingest.py, whose transfer is CPU-bound on 2 cores).
_BLOCK = 4 << 20
_MULTIPART_SIZES_MB = (8, 16, 5, 64, 32, 50, 100)  # common client part sizes, tried in order
_THREADED_MIN = 16 << 20  # objects at least this big are hashed on background threads
_QUEUED_CHUNKS = 8  # chunks (of up to _BLOCK bytes) waiting per hashing thread
_DIRECT_MIN = 64 << 20  # objects streamed to a sink from this size are written with O_DIRECT


class ByteSink(Protocol):
    """Receives an object's bytes in order while :func:`fetch_object` downloads it."""

    def reset(self) -> None:
        """Forget every byte written: the transfer starts again from byte 0."""

    def write(self, chunk: memoryview) -> None:
        """The next bytes of the object."""


@dataclass(frozen=True)
class FetchResult:
    """What happened to one object."""

    key: str
    path: str
    size: int
    etag: str
    md5: str | None  # hex digest of the local file (None where it was trusted from the manifest)
    verified: str  # "md5", "multipart-md5" or "size" (ETag not an MD5 we could reproduce)
    status: str  # "fetched" or "cached"
    attempts: int  # requests made (1 = no interruption)
    resumed_bytes: int  # bytes already on disk (.part) when the transfer began


def file_md5(path: str | os.PathLike, block: int = 8 << 20) -> str:
    """Hex MD5 of a file, read in blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _multipart_etag(path: Path, size: int, n_parts: int, part_size: int) -> str:
    digests = []
    with open(path, "rb") as fh:
        for _ in range(n_parts):
            digests.append(hashlib.md5(fh.read(part_size), usedforsecurity=False).digest())
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{n_parts}"


class _StreamDigest:
    """The digest the ETag should equal, computed as bytes arrive.

    Single-part ETags are the MD5 of the object; multipart ETags are the MD5 of
    the parts' MD5s, ``-N``. For those the part size is guessed (the first
    common size giving N parts); a wrong guess only costs a re-read later.

    Hashing runs on background threads (hashlib releases the GIL), so it
    overlaps the network reads and file writes instead of adding to them; the
    parts of a multipart object are hashed on ``threads`` threads at once.
    Chunks are queued by reference (bounded queues: memory stays a few MB).
    Objects under ``_THREADED_MIN`` bytes are hashed inline.
    """

    def __init__(self, info: ObjectInfo, threads: int = 2) -> None:
        self.multipart = "-" in info.etag
        self.part_size = 0
        if self.multipart:
            n_parts = int(info.etag.rsplit("-", 1)[1])
            for guess in _part_size_guesses(info.size, n_parts):
                if -(-info.size // guess) == n_parts:
                    self.part_size = guess
                    break
        self._hashes: dict[int, Any] = {}  # part number -> md5 (part 0 only if single-part)
        self._fed = 0
        n = max(1, threads if self.multipart and self.part_size else 1)
        self._queues: list[queue.Queue] = []
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        if info.size >= _THREADED_MIN:
            for _ in range(n):
                q: queue.Queue = queue.Queue(maxsize=_QUEUED_CHUNKS)
                t = threading.Thread(target=self._work, args=(q,), daemon=True)
                t.start()
                self._queues.append(q)
                self._threads.append(t)

    def _hash(self, part: int, data: memoryview) -> None:
        h = self._hashes.get(part)
        if h is None:
            h = self._hashes[part] = hashlib.md5(usedforsecurity=False)
        h.update(data)

    def _work(self, q: queue.Queue) -> None:
        while (item := q.get()) is not None:
            if self._error is None:
                try:
                    self._hash(*item)
                except BaseException as err:  # noqa: BLE001 - reported by etag()
                    self._error = err

    def _put(self, part: int, data: memoryview) -> None:
        if self._queues:
            self._queues[part % len(self._queues)].put((part, data))
        else:
            self._hash(part, data)

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        if not self.multipart or not self.part_size:
            if not self.multipart:
                self._put(0, view)
            self._fed += len(view)
            return
        while len(view):
            part = self._fed // self.part_size
            take = min(len(view), (part + 1) * self.part_size - self._fed)
            self._put(part, view[:take])
            self._fed += take
            view = view[take:]

    def close(self) -> None:
        """Stop the hashing threads (idempotent)."""
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()
        self._queues, self._threads = [], []

    def etag(self) -> str | None:
        """The ETag these bytes would have; None if the part size is unknown."""
        self.close()
        if self._error is not None:
            raise self._error
        empty = hashlib.md5(usedforsecurity=False)
        if not self.multipart:
            return self._hashes.get(0, empty).hexdigest()
        if not self.part_size:
            return None
        parts = [self._hashes[n].digest() for n in sorted(self._hashes)]
        return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


def _part_size_guesses(size: int, n_parts: int) -> list[int]:
    guesses = [mb << 20 for mb in _MULTIPART_SIZES_MB]
    even = -(-size // max(n_parts, 1))
    return [*guesses, -(-even // (1 << 20)) << 20]


def verify_file(
    path: Path, info: ObjectInfo, md5: str | None = None, streamed_etag: str | None = None
) -> tuple[bool, str, str | None]:
    """Check ``path`` against the server's size and ETag.

    Returns
    -------
    ok : bool
    how : str
        ``"md5"`` (single-part ETag is the MD5), ``"multipart-md5"`` (the ETag
        was reproduced for a common part size) or ``"size"`` (only the size
        could be checked).
    md5 : str or None
        Hex MD5 of the file (``md5`` if given, computed for single-part
        ETags; None for multipart ETags, which hash each part instead).
    """
    if path.stat().st_size != info.size:
        return False, "size", md5
    etag = info.etag.lower()
    if etag and "-" not in etag and len(etag) == 32:
        md5 = md5 or file_md5(path)
        return md5 == etag, "md5", md5
    if "-" in etag:
        if streamed_etag is not None and streamed_etag == etag:
            return True, "multipart-md5", md5
        n_parts = int(etag.rsplit("-", 1)[1])
        for part in _part_size_guesses(info.size, n_parts):
            if (
                -(-info.size // part) == n_parts
                and _multipart_etag(path, info.size, n_parts, part) == etag
            ):
                return True, "multipart-md5", md5
    return True, "size", md5


def fetch_object(
    source: S3Source,
    info: ObjectInfo,
    dest: str | os.PathLike,
    *,
    retries: int = 6,
    backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
    progress: tqdm | None = None,
    trusted: dict[str, Any] | None = None,
    sink: ByteSink | None = None,
) -> FetchResult:
    """Download one object to ``dest``, resuming ``dest.part`` if present.

    Parameters
    ----------
    source : S3Source
        Where the object lives.
    info : ObjectInfo
        Its key, size and ETag (from :meth:`S3Source.head` or a listing).
    dest : path
        Final local path; written as ``dest.part`` then renamed.
    retries : int
        Consecutive attempts without progress before giving up. An attempt
        that received bytes resets the count, so a flaky link that keeps
        dropping still finishes.
    backoff_s, max_backoff_s : float
        Sleep ``backoff_s * 2**n`` (capped) before the n-th retry.
    progress : tqdm, optional
        Byte counter to advance.
    trusted : dict, optional
        The manifest record of a previous fetch: a file whose size, ETag and
        mtime still match it is not hashed again.
    sink : ByteSink, optional
        Also receives the object's bytes in order as they are written (the
        bytes of a resumed ``.part`` first). Not called when ``dest`` already
        holds the verified object (status ``"cached"``): read the file then.

    Raises
    ------
    RemoteAccessError
        Offline, access denied or no such object (after retries where transient).
    RemoteIntegrityError
        The object failed verification on every attempt.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        stat = dest.stat()
        if (
            trusted
            and trusted.get("etag") == info.etag
            and trusted.get("size") == info.size == stat.st_size
            and trusted.get("mtime_ns") == stat.st_mtime_ns
        ):
            _advance(progress, info.size)
            return FetchResult(
                info.key, str(dest), info.size, info.etag, trusted.get("md5"),
                trusted.get("verified", "size"), "cached", 0, 0,
            )  # fmt: skip
        ok, how, md5 = verify_file(dest, info)
        if ok:
            _advance(progress, info.size)
            return FetchResult(info.key, str(dest), info.size, info.etag, md5, how, "cached", 0, 0)
        log.warning(
            "%s: local copy %s fails verification (%s); fetching again",
            source.url(info.key),
            dest,
            how,
        )
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    resumed = part.stat().st_size if part.exists() else 0
    _advance(progress, min(resumed, info.size))
    attempts = failures = bad_checks = 0
    # MD5 of the bytes in .part, updated as they arrive (saves re-reading the file);
    # unknown when .part came from an earlier process, unless a sink needs those bytes
    # replayed anyway.
    # Parts of a multipart object are hashed on two threads, but on one where a sink
    # consumes the bytes too: the cores are then busy, and a second hashing thread only
    # adds hand-offs (-0.3 s per 1 GB NSD session streamed on 2 cores, benchmarks/ingest.py).
    hash_threads = 1 if sink is not None else 2
    hasher = _StreamDigest(info, hash_threads) if resumed == 0 or sink is not None else None
    # Bytes a sink consumes as they arrive need not stay in the page cache: write them
    # around it (filling it costs kernel time per GB, and evicts what other jobs cache).
    direct = sink is not None and info.size >= _DIRECT_MIN
    if sink is not None:
        sink.reset()
        if 0 < resumed <= info.size:
            _replay(part, resumed, sink, hasher)
    paused = _PausedGC() if info.size >= _THREADED_MIN else None
    try:
        while True:
            offset = part.stat().st_size if part.exists() else 0
            if offset > info.size:
                _advance(progress, -offset)
                part.unlink()
                offset = 0
                hasher = _restart(hasher, info, sink, hash_threads)
            got = 0
            if offset < info.size:
                attempts += 1
                try:
                    body = source.get(info.key, offset, etag=info.etag)
                    with Appender(part, direct) as fh:
                        for chunk in body.iter_chunks(_BLOCK):
                            fh.write(chunk)
                            if hasher is not None:
                                hasher.update(chunk)
                            if sink is not None:
                                try:
                                    sink.write(memoryview(chunk))
                                except Exception as err:
                                    raise _SinkFailed from err
                            got += len(chunk)
                            _advance(progress, len(chunk))
                except _SinkFailed as err:
                    raise err.__cause__ from None  # the sink's own error, not the network's
                except Exception as err:  # noqa: BLE001 - classified below
                    code = _error_code(err)
                    if code in ("PreconditionFailed", "412"):
                        # The object changed since we looked: start over with its new version.
                        log.warning("%s changed on the server; restarting", source.url(info.key))
                        _advance(progress, -(offset + got))
                        part.unlink(missing_ok=True)
                        info = source.head(info.key)
                        hasher = _restart(hasher, info, sink, hash_threads)
                        continue
                    if not is_retryable(err):
                        raise source.translate(err, info.key) from err
                    failures = 0 if got else failures + 1
                    if failures >= retries:
                        raise source.translate(err, info.key) from err
                    delay = min(max_backoff_s, backoff_s * 2 ** max(failures - 1, 0))
                    log.info(
                        "%s: %s after %d bytes; retrying in %.1fs (resume at %d)",
                        source.url(info.key), type(err).__name__, offset + got, delay, offset + got,
                    )  # fmt: skip
                    time.sleep(delay)
                    continue
            streamed = hasher.etag() if hasher else None
            single = streamed if hasher and not hasher.multipart else None
            ok, how, md5 = verify_file(part, info, md5=single, streamed_etag=streamed)
            if ok:
                os.replace(part, dest)
                return FetchResult(
                    info.key,
                    str(dest),
                    info.size,
                    info.etag,
                    md5,
                    how,
                    "fetched",
                    attempts,
                    resumed,
                )
            bad_checks += 1
            log.warning(
                "%s: downloaded bytes fail %s verification; fetching again",
                source.url(info.key),
                how,
            )
            _advance(progress, -part.stat().st_size)
            part.unlink()
            hasher = _restart(hasher, info, sink, hash_threads)
            if bad_checks >= max(2, retries // 2):
                raise RemoteIntegrityError(
                    source.url(info.key),
                    f"{bad_checks} downloads failed {how} verification (ETag {info.etag})",
                    "A server or proxy corrupts transfers; retry later or from another network.",
                )
    finally:
        if hasher is not None:
            hasher.close()
        if paused is not None:
            paused.close()


class _PausedGC:
    """Holds off Python's cycle collector while a large transfer runs.

    The read loop allocates a few objects per MB, which keeps triggering full
    collections of everything the process has imported (a profile of a 1 GB NSD
    session: ~9 % of its CPU in ``gc_collect_main``); the loop makes no cycles.
    Transfers on several threads share one hold: the collector runs again (if it
    ran before) once the last of them closes its hold.
    """

    _lock = threading.Lock()
    _holders = 0
    _was_enabled = False

    def __init__(self) -> None:
        with _PausedGC._lock:
            if _PausedGC._holders == 0:
                _PausedGC._was_enabled = gc.isenabled()
                gc.disable()
            _PausedGC._holders += 1
        self._open = True

    def close(self) -> None:
        """Let the collector run again once no transfer holds it off (idempotent)."""
        with _PausedGC._lock:
            if self._open:
                self._open = False
                _PausedGC._holders -= 1
                if _PausedGC._holders == 0 and _PausedGC._was_enabled:
                    gc.enable()


class _SinkFailed(Exception):
    """Carries an exception a sink raised past the network error handling."""


def _restart(
    hasher: _StreamDigest | None,
    info: ObjectInfo,
    sink: ByteSink | None = None,
    threads: int = 2,
) -> _StreamDigest:
    """A new digest for a transfer that starts over (the old one's threads stopped)."""
    if hasher is not None:
        hasher.close()
    if sink is not None:
        sink.reset()
    return _StreamDigest(info, threads)


def _replay(part: Path, size: int, sink: ByteSink, hasher: _StreamDigest | None) -> None:
    """Feed the first ``size`` bytes already in ``part`` to the sink (and the digest)."""
    with open(part, "rb") as fh:
        left = size
        while left and (chunk := fh.read(min(_BLOCK, left))):
            if hasher is not None:
                hasher.update(chunk)
            sink.write(memoryview(chunk))
            left -= len(chunk)


def _advance(progress: tqdm | None, n: int) -> None:
    if progress is not None and n:
        progress.update(n)


def _error_code(err: Exception) -> str:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def read_manifest(root: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The fetch manifest of ``root`` (key -> record); empty if none."""
    path = Path(root, MANIFEST_NAME)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())["objects"]
    except (json.JSONDecodeError, KeyError):
        log.warning("%s is unreadable; ignoring it", path)
        return {}


#: Parallel transfers when the caller gives none: the config schema's ``source.workers``
#: default, the one home of that setting (in a workflow run the ``fetch`` and
#: ``ingest_betas`` jobs' threads, which the rules take from ``source.workers``).
WORKERS: int = schema_default("source.workers")


def fetch_objects(
    source: S3Source,
    objects: Iterable[str | ObjectInfo],
    root: str | os.PathLike,
    *,
    strip_prefix: str = "",
    workers: int = WORKERS,
    retries: int = 6,
    backoff_s: float = 0.5,
    progress: bool = True,
) -> list[FetchResult]:
    """Fetch many objects into ``root`` in parallel and record them in the manifest.

    Parameters
    ----------
    source : S3Source
    objects : iterable of str or ObjectInfo
        Keys (looked up with HEAD) or listing entries.
    root : path
        Destination folder; object ``key`` lands at ``root/key`` (minus
        ``strip_prefix``). Keys that would leave ``root`` are refused before
        anything is fetched.
    workers : int
        Parallel transfers.
    retries, backoff_s :
        See :func:`fetch_object`.
    progress : bool
        Show a byte progress bar (tqdm).

    Returns
    -------
    list of FetchResult
        In the order given.

    Raises
    ------
    UnsafeKeyError
        A key maps outside ``root`` (nothing is fetched then).
    RemoteAccessError
        The first object that could not be fetched (the others still finish).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    items = list(objects)
    local = []
    for item in items:  # refuse unsafe keys before any network traffic
        key = item if isinstance(item, str) else item.key
        rel = key[len(strip_prefix) :] if strip_prefix and key.startswith(strip_prefix) else key
        local.append(safe_local_path(root, rel))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        infos = list(pool.map(lambda i: source.head(i) if isinstance(i, str) else i, items))
    manifest = read_manifest(root)
    results: list[FetchResult | None] = [None] * len(infos)
    errors: list[Exception] = []
    bar = tqdm(
        total=sum(i.size for i in infos), unit="B", unit_scale=True, unit_divisor=1024,
        desc=f"fetch {source.bucket}", disable=not progress, mininterval=1.0,
    )  # fmt: skip

    def one(n: int) -> FetchResult:
        info, dest = infos[n], local[n]
        return fetch_object(
            source, info, dest, retries=retries, backoff_s=backoff_s, progress=bar,
            trusted=manifest.get(info.key),
        )  # fmt: skip

    with bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # largest first: the long transfer starts at once, the small ones fill in around it
        order = sorted(range(len(infos)), key=lambda n: -infos[n].size)
        futures = {pool.submit(one, n): n for n in order}
        for fut in as_completed(futures):
            try:
                results[futures[fut]] = fut.result()
            except Exception as err:  # noqa: BLE001 - re-raised after the others finish
                errors.append(err)
    record_fetches(root, source, [r for r in results if r is not None])
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def record_fetches(root: str | os.PathLike, source: S3Source, results: list[FetchResult]) -> None:
    """Add ``results`` to the manifest of ``root``.

    The read-modify-write holds an exclusive lock on ``root/.lock``, so jobs that
    fetch into one folder at the same time (one per subject on a cluster) never
    drop each other's records.
    """
    import fcntl

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{MANIFEST_NAME}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest(root)
        for res in results:
            record = asdict(res)
            record["path"] = os.path.relpath(res.path, root)
            record["url"] = source.url(res.key)
            record["mtime_ns"] = Path(res.path).stat().st_mtime_ns
            if res.status == "fetched" or res.key not in manifest:
                record["fetched_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            else:
                record["fetched_at"] = manifest[res.key].get("fetched_at")
                record["md5"] = record["md5"] or manifest[res.key].get("md5")
            manifest[res.key] = record
        _write_manifest(root, manifest)


def _write_manifest(root: Path, manifest: dict[str, dict[str, Any]]) -> None:
    doc = {"written_at": datetime.now(UTC).isoformat(timespec="seconds"), "objects": manifest}
    write_text_atomic(json.dumps(doc, indent=1, sort_keys=True), root / MANIFEST_NAME)


__all__ = [
    "ByteSink",
    "FetchResult",
    "RemoteAccessError",
    "fetch_object",
    "fetch_objects",
    "read_manifest",
    "record_fetches",
]
