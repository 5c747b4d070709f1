"""brainpipe.remote against a real loopback S3 server (moto) and a misbehaving proxy."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from brainpipe.remote import (
    RangeFile,
    RemoteAccessError,
    S3Source,
    UnsafeKeyError,
    fetch_objects,
    read_manifest,
    safe_local_path,
)
from brainpipe.remote.fetch import MANIFEST_NAME

from .conftest import ROOT
from .s3_server import FlakyProxy, admin_client, make_public_bucket, moto_server, upload

BUCKET = "test-bucket"
SIZE = 3_000_000


@pytest.fixture(scope="module")
def server():
    """(endpoint, payload): a public bucket with a 3 MB object, a private one and an HDF5."""
    payload = np.random.default_rng(0).bytes(SIZE)
    with moto_server() as endpoint:
        client = admin_client(endpoint)
        make_public_bucket(client, BUCKET)
        upload(client, BUCKET, "data/blob.bin", payload)
        upload(client, BUCKET, "data/small.txt", b"hello\n")
        upload(client, BUCKET, "secret/blob.bin", b"no", public=False)
        yield endpoint, payload


def test_fetch_verifies_md5_and_writes_manifest(server, tmp_path):
    endpoint, payload = server
    results = fetch_objects(
        S3Source(BUCKET, endpoint_url=endpoint), ["data/blob.bin", "data/small.txt"], tmp_path,
        progress=False,
    )  # fmt: skip
    assert [r.status for r in results] == ["fetched", "fetched"]
    assert (tmp_path / "data/blob.bin").read_bytes() == payload
    assert results[0].verified == "md5" and results[0].md5 == hashlib.md5(payload).hexdigest()
    manifest = read_manifest(tmp_path)
    assert manifest["data/blob.bin"]["size"] == SIZE
    assert manifest["data/blob.bin"]["path"] == "data/blob.bin"
    assert not list(tmp_path.rglob("*.part"))
    again = fetch_objects(
        S3Source(BUCKET, endpoint_url=endpoint), ["data/blob.bin"], tmp_path, progress=False
    )
    assert again[0].status == "cached"


def test_interrupted_several_times_resumes_and_verifies(server, tmp_path):
    endpoint, payload = server
    with FlakyProxy(endpoint, drop_after=600_000, drops=4) as proxy:
        (result,) = fetch_objects(
            S3Source(BUCKET, endpoint_url=proxy.url), ["data/blob.bin"], tmp_path,
            backoff_s=0.01, progress=False,
        )  # fmt: skip
    assert proxy.dropped == 4
    assert result.attempts == 5  # one request per interruption, each continuing with Range
    assert result.verified == "md5"
    assert (tmp_path / "data/blob.bin").read_bytes() == payload


def test_killed_process_resumes_from_part_file(server, tmp_path):
    """A real kill -9 mid-transfer: the next run continues the .part file, then verifies."""
    endpoint, payload = server
    with FlakyProxy(endpoint, drop_after=1_000_000, drops=1) as proxy:
        # The child loses its connection after 1 MB and sleeps 30 s before retrying;
        # we kill -9 it during that sleep, leaving a .part file behind.
        script = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from brainpipe.remote import S3Source, fetch_objects\n"
            f"src = S3Source({BUCKET!r}, endpoint_url={proxy.url!r})\n"
            f"fetch_objects(src, ['data/blob.bin'], {str(tmp_path)!r},"
            " progress=False, backoff_s=30)\n"
        )
        child = subprocess.Popen([sys.executable, "-c", script])
        part = tmp_path / "data/blob.bin.part"
        deadline = time.time() + 30
        while time.time() < deadline and not (part.exists() and part.stat().st_size > 0):
            time.sleep(0.05)
        while time.time() < deadline and proxy.dropped == 0:
            time.sleep(0.05)
        time.sleep(0.3)  # the child now sleeps in its 30 s backoff
        child.kill()
        child.wait()
    size = part.stat().st_size
    assert 0 < size < SIZE and not (tmp_path / "data/blob.bin").exists()
    (result,) = fetch_objects(
        S3Source(BUCKET, endpoint_url=endpoint), ["data/blob.bin"], tmp_path, progress=False
    )
    assert result.resumed_bytes == size and result.attempts == 1
    assert (tmp_path / "data/blob.bin").read_bytes() == payload


def test_corruption_in_transit_is_detected_and_refetched(server, tmp_path):
    endpoint, payload = server
    with FlakyProxy(endpoint, corrupt_at=123_456, corruptions=1) as proxy:
        (result,) = fetch_objects(
            S3Source(BUCKET, endpoint_url=proxy.url), ["data/blob.bin"], tmp_path,
            backoff_s=0.01, progress=False,
        )  # fmt: skip
    assert proxy.corrupted == 1
    assert result.attempts >= 2
    assert (tmp_path / "data/blob.bin").read_bytes() == payload


def test_stale_part_file_with_wrong_bytes_is_discarded(server, tmp_path):
    endpoint, payload = server
    part = tmp_path / "data/blob.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1_000_000)  # e.g. left over from another version of the object
    (result,) = fetch_objects(
        S3Source(BUCKET, endpoint_url=endpoint), ["data/blob.bin"], tmp_path, progress=False
    )
    assert result.resumed_bytes == 1_000_000 and result.attempts == 2
    assert (tmp_path / "data/blob.bin").read_bytes() == payload


def test_corrupted_local_copy_is_detected_and_refetched(server, tmp_path):
    endpoint, payload = server
    src = S3Source(BUCKET, endpoint_url=endpoint)
    fetch_objects(src, ["data/blob.bin"], tmp_path, progress=False)
    path = tmp_path / "data/blob.bin"
    with open(path, "r+b") as fh:  # flip one byte, same size
        fh.seek(1000)
        fh.write(bytes([payload[1000] ^ 1]))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    (result,) = fetch_objects(src, ["data/blob.bin"], tmp_path, progress=False)
    assert result.status == "fetched"
    assert path.read_bytes() == payload


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\..\\x", "C:/x", ""]
)
def test_malicious_keys_are_refused(tmp_path, key):
    with pytest.raises(UnsafeKeyError):
        safe_local_path(tmp_path, key)


def test_malicious_key_refused_before_any_transfer(server, tmp_path):
    endpoint, _ = server
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeKeyError, match=r"'\.\./x'"):
        fetch_objects(S3Source(BUCKET, endpoint_url=endpoint), ["data/small.txt", "../x"], dest)
    assert not (tmp_path / "x").exists() and not (dest / "data/small.txt").exists()


def test_symlink_escape_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "root" / "link")
    with pytest.raises(UnsafeKeyError, match="outside"):
        safe_local_path(tmp_path / "root", "link/x")


def test_access_denied_names_the_file_and_what_to_do(server, tmp_path):
    endpoint, _ = server
    with pytest.raises(
        RemoteAccessError, match=r"s3://test-bucket/secret/blob.bin.*access denied.*anonymous"
    ):
        fetch_objects(
            S3Source(BUCKET, endpoint_url=endpoint), ["secret/blob.bin"], tmp_path, progress=False
        )


def test_offline_names_the_file_and_what_to_do(tmp_path):
    src = S3Source(BUCKET, endpoint_url="http://127.0.0.1:9", connect_timeout=1)
    with pytest.raises(
        RemoteAccessError, match=r"s3://test-bucket/data/blob.bin.*cannot reach.*offline"
    ):
        fetch_objects(src, ["data/blob.bin"], tmp_path, progress=False, retries=2, backoff_s=0.01)


def test_missing_object_names_the_file(server, tmp_path):
    endpoint, _ = server
    with pytest.raises(RemoteAccessError, match=r"data/nope.bin.*no such object"):
        fetch_objects(
            S3Source(BUCKET, endpoint_url=endpoint), ["data/nope.bin"], tmp_path, progress=False
        )


def test_rangefile_reads_hdf5_rows_without_downloading_it(server, tmp_path):
    endpoint, _ = server
    bricks = np.random.default_rng(1).integers(0, 255, (200, 32, 32, 3), dtype=np.uint8)
    local = tmp_path / "brick.hdf5"
    with h5py.File(local, "w") as h5:
        h5.create_dataset("imgBrick", data=bricks, chunks=(1, 32, 32, 3))
    upload(admin_client(endpoint), BUCKET, "stim/brick.hdf5", local.read_bytes())
    src = S3Source(BUCKET, endpoint_url=endpoint)
    with RangeFile(src, "stim/brick.hdf5", block_size=16384) as raw, h5py.File(raw, "r") as h5:
        np.testing.assert_array_equal(h5["imgBrick"][7], bricks[7])
        np.testing.assert_array_equal(h5["imgBrick"][150], bricks[150])
        fetched = raw.requests * raw.block_size
    assert fetched < local.stat().st_size / 4  # only the blocks the two rows need


def test_manifest_is_json_in_the_destination(server, tmp_path):
    endpoint, _ = server
    fetch_objects(
        S3Source(BUCKET, endpoint_url=endpoint), ["data/small.txt"], tmp_path, progress=False
    )
    import json

    doc = json.loads((tmp_path / MANIFEST_NAME).read_text())
    rec = doc["objects"]["data/small.txt"]
    assert rec["md5"] == hashlib.md5(b"hello\n").hexdigest() and rec["url"].startswith(
        "s3://test-bucket/"
    )


def test_multipart_etag_is_verified(server, tmp_path):
    import io

    from boto3.s3.transfer import TransferConfig

    endpoint, _ = server
    payload = np.random.default_rng(2).bytes(11 << 20)
    cfg = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    admin_client(endpoint).upload_fileobj(
        io.BytesIO(payload), BUCKET, "data/multi.bin", ExtraArgs={"ACL": "public-read"}, Config=cfg
    )
    src = S3Source(BUCKET, endpoint_url=endpoint)
    assert src.head("data/multi.bin").etag.endswith("-3")
    (result,) = fetch_objects(src, ["data/multi.bin"], tmp_path, progress=False)
    assert result.verified == "multipart-md5"
    assert (tmp_path / "data/multi.bin").read_bytes() == payload


@pytest.mark.parametrize("multipart", [False, True])
def test_stream_digest_on_threads_matches_the_etag(monkeypatch, multipart):
    """Hashing on background threads (parts in parallel) gives the ETag's digest."""
    import threading

    from brainpipe.remote import fetch
    from brainpipe.remote.source import ObjectInfo

    monkeypatch.setattr(fetch, "_THREADED_MIN", 1)  # thread even this small object
    payload = np.random.default_rng(3).bytes((21 << 20) + 12345)
    part = 8 << 20
    if multipart:
        digests = [
            hashlib.md5(payload[i : i + part]).digest() for i in range(0, len(payload), part)
        ]
        etag = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
    else:
        etag = hashlib.md5(payload).hexdigest()
    before = threading.active_count()
    digest = fetch._StreamDigest(ObjectInfo("k", len(payload), etag), threads=3)
    assert threading.active_count() > before  # hashing runs off the reading thread
    pos, sizes = 0, [1, 1 << 20, 777_777, 3 << 20, 5]
    for i in range(len(payload)):  # odd chunk sizes, straddling part boundaries
        n = sizes[i % len(sizes)]
        digest.update(payload[pos : pos + n])
        pos += n
        if pos >= len(payload):
            break
    assert digest.etag() == etag
    assert threading.active_count() == before  # threads stopped
    digest.close()  # idempotent


def test_large_multipart_object_is_verified_while_streaming(server, tmp_path, monkeypatch):
    """A multipart object, interrupted and resumed in-process, verifies from the streamed
    digest alone (the file is not read back)."""
    import io

    from boto3.s3.transfer import TransferConfig

    from brainpipe.remote import fetch

    endpoint, _ = server
    payload = np.random.default_rng(4).bytes(18 << 20)
    cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)
    admin_client(endpoint).upload_fileobj(
        io.BytesIO(payload), BUCKET, "data/large.bin", ExtraArgs={"ACL": "public-read"}, Config=cfg
    )

    def no_reread(*args, **kwargs):
        raise AssertionError("the downloaded file was read back to verify it")

    monkeypatch.setattr(fetch, "_multipart_etag", no_reread)
    with FlakyProxy(endpoint, drop_after=5_000_000, drops=2) as proxy:
        (result,) = fetch_objects(
            S3Source(BUCKET, endpoint_url=proxy.url), ["data/large.bin"], tmp_path,
            backoff_s=0.01, progress=False,
        )  # fmt: skip
    assert result.attempts >= 2 and result.verified == "multipart-md5"
    assert (tmp_path / "data/large.bin").read_bytes() == payload


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("existing", [0, 5000, 8 << 20])
def test_part_writer_appends_exact_bytes_around_the_page_cache(tmp_path, direct, existing):
    """O_DIRECT staging (aligned blocks, padded tail then truncated, an unaligned .part
    continued) gives byte for byte what buffered appends give, also closed mid-way."""
    from brainpipe.directio import Appender

    rng = np.random.default_rng(existing)
    data = rng.integers(0, 256, (20 << 20) + 777, dtype=np.uint8).tobytes()
    part = tmp_path / "x.part"
    part.write_bytes(data[:existing])
    pos = existing
    for stop in (existing + 3 * (1 << 20) + 1, len(data)):  # two attempts, as after a drop
        with Appender(part, direct) as fh:
            while pos < stop:
                n = min(int(rng.integers(1, 3 << 20)), stop - pos)
                fh.write(data[pos : pos + n])
                pos += n
        assert part.stat().st_size == stop
    assert part.read_bytes() == data


def test_part_writer_falls_back_where_o_direct_is_refused(tmp_path):
    from brainpipe.directio import Appender

    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no tmpfs at /dev/shm on this machine")
    part = shm / f"bp-test-{os.getpid()}.part"
    try:
        data = os.urandom((9 << 20) + 5)
        with Appender(part, direct=True) as fh:
            fh.write(data)
        assert part.read_bytes() == data
    finally:
        part.unlink(missing_ok=True)


def test_part_writer_goes_buffered_when_a_direct_write_is_refused(tmp_path, monkeypatch):
    """O_DIRECT accepted at open but refused on a write (some FUSE file systems): the
    refused block and everything after it are written buffered, nothing is lost."""
    from brainpipe import directio

    calls = {"n": 0}
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(22, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(directio.os, "pwrite", pwrite)
    data = os.urandom(3 * directio.STAGE + 1234)
    part = tmp_path / "x.part"
    with directio.Appender(part, direct=True) as fh:
        for n in range(0, len(data), 1 << 20):
            fh.write(data[n : n + (1 << 20)])
    assert calls["n"] >= 2 and part.read_bytes() == data
