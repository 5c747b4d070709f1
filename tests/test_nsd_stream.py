"""NSD betas gathered while they download (nsd_stream), against a loopback S3 server.

The streamed session must equal the file the server holds, whatever happens to the
transfer: dropped connections, a corrupted byte, a process killed mid-file; NSD's own
layout (one chunk per voxel) is gathered as it arrives too, its chunk index walked on the
stream; layouts the stream cannot gather (a header past the buffered bytes, no session
buffer free) fall back to ingesting the downloaded file.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brainpipe.datasets import nsd, nsd_stream
from brainpipe.datasets.registry import load_entry
from brainpipe.download import fetch_dataset
from brainpipe.errors import BrainpipeInputError
from brainpipe.remote import fetch, read_manifest
from brainpipe.splits import read_splits
from brainpipe.storage import open_zarr

from .nsd_fixtures import write_nsd_tree
from .s3_server import FlakyProxy, publish_tree, serve_tree

BUCKET = "natural-scenes-dataset"
SESSIONS = ["01", "02"]
SHAPE = (9, 10, 8)  # 720 voxels: 1.08 MB per session, several network chunks past the header


@pytest.fixture(scope="module")
def contiguous_server(tmp_path_factory):
    """A tiny NSD whose ``/betas`` are contiguous (streamable); yields (endpoint, truth, tree)."""
    tree = tmp_path_factory.mktemp("nsd-contiguous")
    truth = write_nsd_tree(tree, sessions=SESSIONS, shape=SHAPE, betas_layout="contiguous")
    with serve_tree(tree, BUCKET) as endpoint:
        yield endpoint, truth, tree


@pytest.fixture
def small_header(monkeypatch):
    """Parse the header after 8 kB, so most of each file flows through the gathering path."""
    monkeypatch.setattr(nsd_stream, "HEADER_BYTES", 8192)


def options(endpoint_url: str, **extra) -> nsd.NsdOptions:
    entry = load_entry("nsd")
    source = {"endpoint_url": endpoint_url, "zscore": False, **extra}
    return nsd.NsdOptions.from_config({**entry.info, **entry.merged_source({"source": source})})


def kept_voxels(truth):
    mask = truth["mask"]["01"]
    return mask, nsd.hdf5_voxel_index(np.argwhere(mask).astype(np.int32), SHAPE)


def expected_int16(truth, mask, ses):
    return np.round(truth["betas"][("01", ses)][mask].T * 300).astype(np.int16)


def stream(endpoint, cache, truth, ses="01", trial_batch=7):
    mask, flat = kept_voxels(truth)
    out = np.zeros((750, len(flat)), np.int16)
    key = nsd.betas_key("01", ses, options(endpoint))
    rows = nsd_stream.gather_into(out, flat)
    path = nsd_stream.fetch_session_betas(options(endpoint), key, cache, SHAPE, rows, trial_batch)
    return path, out, key


def test_streamed_session_equals_the_file(contiguous_server, small_header, tmp_path):
    endpoint, truth, tree = contiguous_server
    path, out, key = stream(endpoint, tmp_path / "cache", truth)
    assert path is None  # gathered from the network bytes, not read back from the file
    mask, _ = kept_voxels(truth)
    np.testing.assert_array_equal(out, expected_int16(truth, mask, "01"))
    # the download itself is the ordinary verified one, kept in the cache, in the manifest
    assert (tmp_path / "cache" / key).read_bytes() == (tree / key).read_bytes()
    record = read_manifest(tmp_path / "cache")[key]
    assert record["verified"] == "md5" and record["status"] == "fetched"
    # a second run finds the verified file and reads it instead of fetching again
    again, _, _ = stream(endpoint, tmp_path / "cache", truth)
    assert again == tmp_path / "cache" / key
    assert read_manifest(tmp_path / "cache")[key]["status"] == "cached"


def test_stream_survives_drops_and_a_corrupted_byte(
    contiguous_server, small_header, monkeypatch, tmp_path
):
    endpoint, truth, _ = contiguous_server
    # written with O_DIRECT as a full-size session would be: drops leave unaligned .part ends
    monkeypatch.setattr(fetch, "_DIRECT_MIN", 0)
    with FlakyProxy(endpoint, drop_after=300_000, drops=3, corrupt_at=100_000, corruptions=1) as px:
        path, out, key = stream(px.url, tmp_path / "cache", truth, ses="02")
    assert px.dropped == 3 and px.corrupted == 1
    assert path is None
    mask, _ = kept_voxels(truth)
    # the corrupted transfer failed its MD5, the sink was reset, the refetch gathered again
    np.testing.assert_array_equal(out, expected_int16(truth, mask, "02"))
    assert read_manifest(tmp_path / "cache")[key]["verified"] == "md5"


def test_killed_stream_resumes_from_part_file(contiguous_server, small_header, tmp_path):
    endpoint, truth, tree = contiguous_server
    key = nsd.betas_key("01", "01", options(endpoint))
    part = tmp_path / "cache" / (key + ".part")
    part.parent.mkdir(parents=True)
    whole = (tree / key).read_bytes()
    part.write_bytes(whole[:555_555])  # what a killed job left behind
    path, out, _ = stream(endpoint, tmp_path / "cache", truth, trial_batch=750)
    assert path is None
    mask, _ = kept_voxels(truth)
    np.testing.assert_array_equal(out, expected_int16(truth, mask, "01"))
    record = read_manifest(tmp_path / "cache")[key]
    assert record["resumed_bytes"] == 555_555 and record["verified"] == "md5"
    assert not part.exists()


def test_header_past_buffered_bytes_falls_back_to_the_file(
    contiguous_server, monkeypatch, tmp_path
):
    endpoint, truth, tree = contiguous_server
    monkeypatch.setattr(nsd_stream, "HEADER_BYTES", 64)  # the superblock only
    path, out, key = stream(endpoint, tmp_path / "cache", truth)
    assert path == tmp_path / "cache" / key and not out.any()
    assert path.read_bytes() == (tree / key).read_bytes()


@pytest.mark.parametrize(
    ("zscore", "voxel_chunk"),
    [
        (False, 4096),  # trials appended straight to the int16 chunk files, O_DIRECT
        (False, 100),  # several chunk files, a padded edge one, unaligned: buffered
        (True, 4096),  # z-scoring needs the whole session: gathered, then written
    ],
)
def test_ingest_streams_and_equals_ingest_from_files(
    contiguous_server, small_header, monkeypatch, tmp_path, zscore, voxel_chunk
):
    """Default config (stream_betas: true): the data folder holds no betas files, ingest
    fetches them; the same store as fetching everything first and reading the files."""
    endpoint, truth, _ = contiguous_server
    appended = []
    real_call = nsd.ChunkRowWriter.__call__
    monkeypatch.setattr(
        nsd.ChunkRowWriter,
        "__call__",
        lambda self, t0, slab: appended.append(t0) or real_call(self, t0, slab),
    )
    stores = {}
    for stream_betas in (True, False):
        dest = tmp_path / f"stream-{stream_betas}" / "nsd"
        source = {"endpoint_url": endpoint, "stream_betas": stream_betas, "zscore": zscore}
        fetch_dataset("nsd", dest, subjects=["01"], sessions=SESSIONS, source=source,
                      progress=False)  # fmt: skip
        opts = options(endpoint, stream_betas=stream_betas, zscore=zscore)
        files = [dest / nsd.betas_key("01", ses, opts) for ses in SESSIONS]
        assert all(f.exists() for f in files) != stream_betas
        splits = dest.parent / "splits.tsv"
        nsd.make_nsd_splits(dest / nsd.EXPDESIGN_KEY, ["01"], SESSIONS, splits)
        out = nsd.ingest_nsd_subject(
            dest, "01", SESSIONS, dest.parent / "b.zarr", opts, splits, voxel_chunk=voxel_chunk
        )
        stores[stream_betas] = open_zarr(out).load()
        if stream_betas:
            cached = read_manifest(nsd.object_cache(dest))
            assert all(cached[nsd.betas_key("01", s, opts)]["verified"] == "md5" for s in SESSIONS)
    import xarray as xr

    xr.testing.assert_identical(stores[True], stores[False])
    # int16 stores are filled trial batch by trial batch as the bytes arrive
    assert sorted(set(appended)) == ([] if zscore else list(range(0, 750, 16)))
    values, valid = stores[True]["betas"].values, stores[True]["valid"].values
    for n in range(len(SESSIONS)):  # NaN exactly where NSD marks a voxel invalid, if z-scored
        rows = values[n * 750 : (n + 1) * 750]
        assert np.isfinite(rows[:, valid[n]]).all()
        assert (~valid[n]).any() and (np.isnan(rows[:, ~valid[n]]).all() == zscore)
    if not zscore:
        mask, _ = kept_voxels(truth)
        for n, ses in enumerate(SESSIONS):
            want = np.divide(expected_int16(truth, mask, ses), 300, dtype=np.float32)
            np.testing.assert_array_equal(
                stores[True]["betas"].values[n * 750 : (n + 1) * 750], want
            )


def test_chunked_betas_are_ingested_after_download(contiguous_server, tmp_path):
    """NSD's chunked /betas with no session buffer to gather it into (another session
    holds it, or the caller gives none) is fetched whole and read from the cached file:
    same values."""
    endpoint, _, _ = contiguous_server
    tree = tmp_path / "bucket"
    truth = write_nsd_tree(tree, sessions=["01"], shape=SHAPE, betas_layout="published")
    publish_tree(endpoint, "nsd-chunked", tree)  # same server, its own bucket
    source = {"endpoint_url": endpoint, "bucket": "nsd-chunked"}
    opts = options(**source)
    key = nsd.betas_key("01", "01", opts)
    mask, flat = kept_voxels(truth)
    out = np.zeros((750, len(flat)), np.int16)
    rows = nsd_stream.gather_into(out, flat)
    path = nsd_stream.fetch_session_betas(opts, key, tmp_path / "cache", SHAPE, rows)
    assert path == tmp_path / "cache" / key and not out.any()
    dest = tmp_path / "data" / "nsd"
    fetch_dataset("nsd", dest, subjects=["01"], sessions=["01"], source=source, progress=False)
    shutil.copytree(tmp_path / "cache", nsd.object_cache(dest), dirs_exist_ok=True)
    ds = open_zarr(nsd.ingest_nsd_subject(dest, "01", ["01"], tmp_path / "b.zarr", opts))
    np.testing.assert_allclose(ds["betas"].values, truth["betas"][("01", "01")][mask].T, atol=1e-6)


def test_snakemake_streams_sessions_in_the_ingest_job(contiguous_server, tmp_path):
    """Through the rules: `fetch` leaves the session files alone, `ingest_betas` downloads
    them into the object cache while it writes betas.zarr (int16 on disk, float32 read)."""
    from .test_nsd import nsd_config, run_snakemake

    endpoint, truth, _ = contiguous_server
    target = "results/nsd/sub-01/betas.zarr"
    result = run_snakemake(tmp_path, nsd_config(endpoint), target)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    opts = options(endpoint)
    data = tmp_path / "data" / "nsd"
    assert not (data / nsd.betas_key("01", "01", opts)).exists()
    cached = read_manifest(nsd.object_cache(data))
    assert all(cached[nsd.betas_key("01", s, opts)]["verified"] == "md5" for s in SESSIONS)
    ds = open_zarr(tmp_path / target)
    mask, _ = kept_voxels(truth)
    for n, ses in enumerate(SESSIONS):
        want = np.divide(expected_int16(truth, mask, ses), 300, dtype=np.float32)
        np.testing.assert_array_equal(ds["betas"].values[n * 750 : (n + 1) * 750], want)


def test_streamed_sessions_land_in_the_configured_cache(contiguous_server, tmp_path):
    endpoint, truth, _ = contiguous_server
    cache = tmp_path / "elsewhere"
    source = {"endpoint_url": endpoint, "cache_dir": str(cache)}
    dest = tmp_path / "data" / "nsd"
    fetch_dataset("nsd", dest, subjects=["01"], sessions=["01"], source=source, progress=False)
    opts = options(endpoint, cache_dir=str(cache))
    nsd.ingest_nsd_subject(dest, "01", ["01"], tmp_path / "b.zarr", opts)
    key = nsd.betas_key("01", "01", opts)
    assert (cache / key).is_file() and read_manifest(cache)[key]["verified"] == "md5"
    assert not nsd.object_cache(dest).exists()


def test_sessions_stream_side_by_side(contiguous_server, monkeypatch, tmp_path):
    """Sessions of an int16 store are fetched concurrently (source.workers), as the
    whole-file fetch does: one S3 connection rarely fills a link. Both sessions must be
    under way at once to pass the barrier."""
    import threading

    endpoint, truth, _ = contiguous_server
    barrier = threading.Barrier(2, timeout=20)
    real = nsd._stream_session

    def both_at_once(*args, **kwargs):
        barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(nsd, "_stream_session", both_at_once)
    dest = tmp_path / "data" / "nsd"
    fetch_dataset("nsd", dest, subjects=["01"], sessions=SESSIONS,
                  source={"endpoint_url": endpoint}, progress=False)  # fmt: skip
    out = nsd.ingest_nsd_subject(dest, "01", SESSIONS, tmp_path / "b.zarr", options(endpoint))
    mask, _ = kept_voxels(truth)
    values = open_zarr(out)["betas"].values
    for n, ses in enumerate(SESSIONS):
        want = np.divide(expected_int16(truth, mask, ses), 300, dtype=np.float32)
        np.testing.assert_array_equal(values[n * 750 : (n + 1) * 750], want)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 7)] * 3),
    seed=st.integers(0, 2**16),
    fraction=st.floats(0.0, 1.0),
)
def test_kept_voxels_gather_what_np_take_gathers(shape, seed, fraction):
    """KeptVoxels' two-step gather (file order, then store order) equals a plain np.take."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < fraction
    flat = nsd.hdf5_voxel_index(np.argwhere(mask).astype(np.int32), shape)
    slab = rng.integers(-(2**15), 2**15, (5, int(np.prod(shape))), dtype=np.int16)
    kept = nsd.KeptVoxels(flat)
    out = np.zeros((5, len(flat)), np.int16)
    kept.gather(slab, out)
    np.testing.assert_array_equal(out, slab[:, flat])
    for volume in slab:
        np.testing.assert_array_equal(kept.row(volume), volume[flat])


def test_refused_chunk_write_fails_the_ingest_and_leaves_no_store(
    contiguous_server, small_header, monkeypatch, tmp_path
):
    """The chunk files are written on background threads: a write the disk refuses (here:
    full) still fails the job, with the disk's error, and no betas.zarr is left."""
    endpoint, _, _ = contiguous_server
    calls = []

    def full_disk(fds, view, chunks, size, offset):
        calls.append(offset)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return real_write(fds, view, chunks, size, offset)

    from brainpipe.datasets import nsd_store

    real_write = nsd_store._write_blocks
    monkeypatch.setattr(nsd_store, "_write_blocks", full_disk)
    dest = tmp_path / "nsd"
    source = {"endpoint_url": endpoint, "zscore": False}
    fetch_dataset("nsd", dest, subjects=["01"], sessions=["01"], source=source, progress=False)
    opts = options(endpoint)
    splits = tmp_path / "splits.tsv"
    nsd.make_nsd_splits(dest / nsd.EXPDESIGN_KEY, ["01"], ["01"], splits)
    out = tmp_path / "betas.zarr"
    with pytest.raises(OSError, match="No space left"):
        nsd.ingest_nsd_subject(dest, "01", ["01"], out, opts, splits, voxel_chunk=100)
    assert len(calls) > 3
    assert not out.exists() and not list(tmp_path.glob("*betas.zarr*"))


def test_store_layout_error_stops_the_streams_and_names_the_field(
    contiguous_server, small_header, tmp_path
):
    """Sessions start streaming while the store is laid out; a bad splits.tsv found then
    is the error raised (naming file and field), the streams stop at their first trials
    and no betas.zarr is left."""
    endpoint, _, _ = contiguous_server
    dest = tmp_path / "nsd"
    source = {"endpoint_url": endpoint}
    fetch_dataset("nsd", dest, subjects=["01"], sessions=SESSIONS, source=source, progress=False)
    splits = tmp_path / "splits.tsv"
    nsd.make_nsd_splits(dest / nsd.EXPDESIGN_KEY, ["01"], SESSIONS, splits)
    lines = splits.read_text().splitlines()
    splits.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # one stimulus left out
    out = tmp_path / "betas.zarr"
    with pytest.raises(BrainpipeInputError, match="has no split") as err:
        nsd.ingest_nsd_subject(dest, "01", SESSIONS, out, options(endpoint), splits)
    assert err.value.field == "stimulus" and str(splits) in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".betas.zarr*"))
    cache = nsd.object_cache(dest)
    assert not any((cache / nsd.betas_key("01", s, options(endpoint))).exists() for s in SESSIONS)


def _chunked_file(path, volume, seed, order, fill=0):
    """``/betas`` (750, K, J, I) chunked one voxel per chunk, written in ``order``: all at
    once (as NSD's export), plane by plane backwards, or a few planes left unwritten (fill)."""
    import h5py

    rng = np.random.default_rng(seed)
    data = rng.integers(-3000, 3000, (750, *volume), dtype=np.int16)
    with h5py.File(path, "w") as h5:
        dset = h5.create_dataset(
            "betas", shape=data.shape, dtype=np.int16, chunks=(750, 1, 1, 1), fillvalue=fill
        )
        if order == "whole":
            dset[...] = data
        else:
            planes = (
                range(volume[0] - 1, -1, -1) if order == "backwards" else range(0, volume[0], 2)
            )
            for k in planes:
                dset[:, k] = data[:, k]
            if order == "holes":
                data[:, 1::2] = fill
    return data


@settings(max_examples=25, deadline=None)
@given(
    volume=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 7)),
    seed=st.integers(0, 2**16),
    fraction=st.floats(0.05, 1.0),
    order=st.sampled_from(["whole", "backwards", "holes"]),
    window=st.sampled_from([4096, 20_000, 1 << 20]),
    piece=st.integers(1, 300_000),
)
def test_streamed_chunks_equal_the_file_whatever_the_window(
    tmp_path_factory, volume, seed, fraction, order, window, piece
):
    """The chunk walk on the stream places every kept voxel's chunk as reading the file
    does: any piece sizes, any window (a small one leaves nodes and chunks to be read from
    the file at the end), nodes after their chunks, chunks never written (fill value)."""
    from brainpipe.datasets.nsd_chunks import StreamedChunks, streamable_index

    path = tmp_path_factory.mktemp("chunks") / "betas.hdf5"
    data = _chunked_file(path, volume, seed, order, fill=-7)
    rng = np.random.default_rng(seed + 1)
    flat = np.flatnonzero(rng.random(int(np.prod(volume))) < fraction)
    rng.shuffle(flat)  # the store's order is not the file's
    raw = path.read_bytes()
    import h5py

    with h5py.File(path, "r") as h5:
        index = streamable_index(h5["betas"], lambda at, n: raw[at : at + n])
    assert index is not None
    kept = np.full(int(np.prod(volume)), -1, np.int64)
    kept[flat] = np.arange(len(flat))
    out = np.zeros((len(flat), 750), np.int16)
    chunks = StreamedChunks(*index, volume, kept, out, window=window)
    for at in range(0, len(raw), piece):
        chunks.feed(memoryview(raw)[at : at + piece])
    chunks.finish(path, fill=-7)
    np.testing.assert_array_equal(out, data.reshape(750, -1)[:, flat].T)
    if window >= len(raw):
        assert chunks.from_file == 0  # all of it from the stream


@pytest.fixture(scope="module")
def published_server(tmp_path_factory):
    """A tiny NSD in NSD's own chunk layout; yields (endpoint, truth, tree)."""
    tree = tmp_path_factory.mktemp("nsd-published")
    truth = write_nsd_tree(tree, sessions=SESSIONS, shape=SHAPE, betas_layout="published")
    with serve_tree(tree, BUCKET) as endpoint:
        yield endpoint, truth, tree


def stream_voxels(endpoint, cache, truth, ses="01"):
    """Fetch a published-layout session, gathering it voxel-major as it arrives."""
    mask, flat = kept_voxels(truth)
    out = np.zeros((len(flat), 750), np.int16)
    key = nsd.betas_key("01", ses, options(endpoint))
    rows = nsd_stream.gather_into(np.zeros((750, len(flat)), np.int16), flat)
    path = nsd_stream.fetch_session_betas(
        options(endpoint), key, cache, SHAPE, rows, flat=flat, voxel_buffer=lambda: out
    )
    return path, out, key


def test_published_chunks_stream_equal_the_file(published_server, small_header, tmp_path):
    endpoint, truth, tree = published_server
    path, out, key = stream_voxels(endpoint, tmp_path / "cache", truth)
    assert path is None  # gathered from the network bytes
    mask, _ = kept_voxels(truth)
    np.testing.assert_array_equal(out, expected_int16(truth, mask, "01").T)
    assert (tmp_path / "cache" / key).read_bytes() == (tree / key).read_bytes()
    assert read_manifest(tmp_path / "cache")[key]["verified"] == "md5"


def test_published_chunks_stream_survives_drops_and_a_corrupted_byte(
    published_server, small_header, monkeypatch, tmp_path
):
    endpoint, truth, _ = published_server
    monkeypatch.setattr(fetch, "_DIRECT_MIN", 0)
    with FlakyProxy(endpoint, drop_after=300_000, drops=3, corrupt_at=100_000, corruptions=1) as px:
        path, out, key = stream_voxels(px.url, tmp_path / "cache", truth, ses="02")
    assert px.dropped == 3 and px.corrupted == 1
    assert path is None
    mask, _ = kept_voxels(truth)
    np.testing.assert_array_equal(out, expected_int16(truth, mask, "02").T)


@pytest.mark.parametrize("zscore", [False, True])
def test_published_ingest_streams_and_equals_ingest_from_files(
    published_server, monkeypatch, tmp_path, zscore
):
    """NSD's layout through ingest_nsd_subject: streamed (the default) and from the
    fetched files, the same store; the streamed sessions never read their files back
    but for what the (here tiny) window had passed."""
    from brainpipe.datasets import nsd_chunks

    endpoint, truth, _ = published_server
    monkeypatch.setattr(nsd_chunks, "STREAM_WINDOW", 4096)
    walked = []
    real_finish = nsd_chunks.StreamedChunks.finish
    monkeypatch.setattr(
        nsd_chunks.StreamedChunks,
        "finish",
        lambda self, *a: walked.append(self) or real_finish(self, *a),
    )
    from brainpipe.datasets import nsd_store

    summed = []  # sessions z-scored with statistics summed as their voxels arrived
    real_center_scale = nsd_store.TrainStats.center_scale
    monkeypatch.setattr(
        nsd_store.TrainStats,
        "center_scale",
        lambda self: summed.append(self.late) or real_center_scale(self),
    )
    stores = {}
    for stream_betas in (True, False):
        dest = tmp_path / f"stream-{stream_betas}" / "nsd"
        source = {"endpoint_url": endpoint, "stream_betas": stream_betas, "zscore": zscore}
        fetch_dataset("nsd", dest, subjects=["01"], sessions=SESSIONS, source=source,
                      progress=False)  # fmt: skip
        opts = options(endpoint, stream_betas=stream_betas, zscore=zscore)
        splits = dest.parent / "splits.tsv"
        nsd.make_nsd_splits(dest / nsd.EXPDESIGN_KEY, ["01"], SESSIONS, splits)
        out = nsd.ingest_nsd_subject(
            dest, "01", SESSIONS, dest.parent / "b.zarr", opts, splits, voxel_chunk=100
        )
        stores[stream_betas] = open_zarr(out).load()
    import xarray as xr

    if zscore:  # streamed: statistics summed as the voxels arrived; from files: per block
        from .test_nsd import assert_float32_rounding_of

        mask, _ = kept_voxels(truth)
        split_of = read_splits(tmp_path / "stream-True" / "splits.tsv")
        train = np.array([split_of[s] == "train" for s in stores[True]["stimulus"].values])
        for n, ses in enumerate(SESSIONS):
            rows = slice(n * 750, (n + 1) * 750)
            invalid = ~stores[True]["valid"].values[n]
            for streamed in (True, False):
                got = stores[streamed]["betas"].values[rows]
                ints = expected_int16(truth, mask, ses)
                assert_float32_rounding_of(got, ints, train[rows], invalid)
        stores = {k: v.drop_vars("betas") for k, v in stores.items()}
    xr.testing.assert_identical(stores[True], stores[False])
    # sessions streamed one at a time (one session buffer), the others from their files
    assert 1 <= len(walked) <= len(SESSIONS)
    assert all(0 < w.from_file < w.placed for w in walked)
    assert len(summed) == (len(walked) if zscore else 0)
    if zscore:  # the voxels not summed as they arrived: at least those read from the file
        # (all of them where the tiny session arrived before the store was laid out)
        assert all(w.from_file <= n <= w.placed for n, w in zip(summed, walked, strict=True))
    if not zscore:
        mask, _ = kept_voxels(truth)
        for n, ses in enumerate(SESSIONS):
            want = np.divide(expected_int16(truth, mask, ses), 300, dtype=np.float32)
            np.testing.assert_array_equal(
                stores[True]["betas"].values[n * 750 : (n + 1) * 750], want
            )
