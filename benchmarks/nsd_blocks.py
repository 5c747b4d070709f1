"""NSD ingest's in-memory steps after the download: tiled (ours) against whole-block passes.

A streamed NSD session is gathered voxel-major (a voxel's 750 int16 trials per row, the
file's chunk order), while betas.zarr is trial-major. Two steps turn one into the other,
and both work a cache-sized tile of voxels at a time (``nsd_store.TILE_VOXELS``):

- ``stats``: each voxel's sums of ``x`` and ``x**2`` over the training trials
  (:class:`~brainpipe.datasets.nsd_store.TrainStats`: float64 tiles, two BLAS
  matrix-vector products under one BLAS thread). Reference: ``numpy.einsum`` over float64
  copies of the same rows, as the sums were taken before.
- ``convert-zscored`` / ``convert-shipped``: the session's Zarr chunk files, z-scored
  float32 or int16 as NSD ships them (:class:`~brainpipe.datasets.nsd_store.BlockWriter`
  with its default threads, writing around the page cache): the step an ingest takes after
  a session's last byte. Reference: the same writer with one strided pass over each whole
  block (the tiling switched off), as before.
- ``convert-zscored-cpu`` / ``convert-shipped-cpu``: the same conversion on one thread,
  each finished chunk hashed instead of written (the hashing's time left out): what the
  tiling changes in CPU time, which the cores shared with a download feel, apart from the
  disk.

Each variant runs in a fresh process on the same seeded session (``--voxels`` voxels,
270,000 by default: a 1.8 mm NSD subject's brain mask); the variants alternate
``--repeats`` times. Reported per case: the medians of the step's own time (measured
inside the process), the whole process's wall time and its peak RSS, and the ratio of the
reference's step time to ours. The results must agree: the sums exactly (they are
integers in float64), the chunk files (or their hashes) byte for byte.

    .venv/bin/python benchmarks/nsd_blocks.py                # full size, 3 repeats
    .venv/bin/python benchmarks/nsd_blocks.py --voxels 20000 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from measure import run_child  # noqa: E402

CASES = (
    "stats",
    "convert-zscored",
    "convert-shipped",
    "convert-zscored-cpu",
    "convert-shipped-cpu",
)
VARIANTS = ("tiled", "whole")
TRIALS = 750
#: rows handed to the statistics at once, as the stream hands over a piece's voxels
ROWS_PER_PIECE = 4096


def make_session(n_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded voxel-major int16 session (betas x 300) and its training trials."""
    from brainpipe.datasets.nsd_hdf5 import scratch_array

    rng = np.random.default_rng(0)
    buffer = scratch_array((n_voxels, TRIALS), np.int16)
    for a in range(0, n_voxels, 16384):  # in pieces: no float64 copy of the session
        b = min(n_voxels, a + 16384)
        buffer[a:b] = rng.normal(0, 600, (b - a, TRIALS)).astype(np.int16)
    train = rng.random(TRIALS) < 0.9
    return buffer, train


def sums_whole(buffer: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference statistics: einsum over float64 copies of each piece's rows."""
    w = train.astype(np.float64)
    total = np.empty(len(buffer)), np.empty(len(buffer))
    for a in range(0, len(buffer), ROWS_PER_PIECE):
        x = buffer[a : a + ROWS_PER_PIECE].astype(np.float64)
        total[0][a : a + len(x)] = np.einsum("vt,t->v", x, w)
        total[1][a : a + len(x)] = np.einsum("vt,vt,t->v", x, x, w)
    return total


def sums_tiled(buffer: np.ndarray, train: np.ndarray):
    """brainpipe's statistics (TrainStats), fed piece by piece under one BLAS thread."""
    from threadpoolctl import threadpool_limits

    from brainpipe.datasets.nsd_store import TrainStats

    stats = TrainStats(len(buffer), lambda: train, "benchmark")
    with threadpool_limits(limits=1, user_api="blas"):
        for a in range(0, len(buffer), ROWS_PER_PIECE):
            rows = np.arange(a, min(len(buffer), a + ROWS_PER_PIECE))
            stats.add(rows, buffer[rows[0] : rows[-1] + 1])
    return stats


def convert(
    buffer: np.ndarray, train: np.ndarray, store: Path, zscore: bool, whole: bool, cpu: bool
) -> tuple[float, dict]:
    """Write the session's chunk files with BlockWriter; return the seconds it took.

    With ``cpu``, on one thread, each chunk hashed instead of written: the seconds exclude
    the hashing, and the hashes (chunk file -> BLAKE2b) are returned too.
    """
    import hashlib

    import zarr

    from brainpipe import directio
    from brainpipe.config import VOXEL_CHUNK
    from brainpipe.datasets import nsd_store

    digests: dict[str, str] = {}
    hashing = [0.0]
    if cpu:  # BlockWriter imports write_file_direct from brainpipe.directio at each write

        def digest(path: Path, buf: np.ndarray) -> None:
            start = time.perf_counter()
            digests[str(Path(path).relative_to(store))] = hashlib.blake2b(buf).hexdigest()
            hashing[0] += time.perf_counter() - start

        directio.write_file_direct = digest

    if whole:  # the reference: one strided pass over each whole block
        nsd_store._voxel_major = lambda src: False
    n_voxels = len(buffer)
    betas = zarr.create_array(
        str(store), shape=(TRIALS, n_voxels), chunks=(TRIALS, min(VOXEL_CHUNK, n_voxels)),
        dtype=np.float32, compressors=None, fill_value=np.nan,
        filters=None if zscore else [nsd_store.betas_int16_filter()],
        config={"write_empty_chunks": True}, zarr_format=3,
    )  # fmt: skip
    stats = sums_tiled(buffer, train) if zscore else None  # the same for both variants
    start = time.perf_counter()
    with nsd_store.BlockWriter(
        betas, slice(0, TRIALS), betas.chunks[1], train if zscore else None, store,
        workers=1 if cpu else None, stats=stats,
    ) as writer:  # fmt: skip
        for fut in writer.submit(buffer.T, 0):
            fut.result()
    return time.perf_counter() - start - hashing[0], digests


def child(case: str, variant: str, n_voxels: int, out: Path) -> None:
    """One measured process: build the session, run one step, write its results."""
    buffer, train = make_session(n_voxels)
    if case == "stats":
        start = time.perf_counter()
        if variant == "whole":
            total, total_sq = sums_whole(buffer, train)
        else:
            stats = sums_tiled(buffer, train)
            total, total_sq = stats.sum, stats.sum_sq
        step = time.perf_counter() - start
        np.save(out / f"sums-{variant}.npy", np.stack([total, total_sq]))
    else:
        store = out / f"{case}-{variant}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        zscore, cpu = case.startswith("convert-zscored"), case.endswith("-cpu")
        step, digests = convert(buffer, train, store, zscore, variant == "whole", cpu)
        if cpu:
            (out / f"{case}-{variant}-digests.json").write_text(json.dumps(digests))
    (out / f"{case}-{variant}.json").write_text(json.dumps({"step_s": step}))


def same_chunk_files(a: Path, b: Path) -> bool:
    """Whether two stores' chunk files (under ``c/``) are identical byte for byte."""
    files_a = sorted(p.relative_to(a) for p in (a / "c").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in (b / "c").rglob("*") if p.is_file())
    if files_a != files_b or not files_a:
        return False
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voxels", type=int, default=270_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/nsd_blocks.json")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.voxels, args.dir)
        return

    results: dict = {
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "loadavg_start": os.getloadavg(), "numpy": np.__version__,
        },
        "voxels": args.voxels, "trials": TRIALS, "repeats": args.repeats, "cases": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="nsd-blocks-", dir=ROOT / "benchmarks") as tmp:
        work = Path(tmp)
        for case in args.cases:
            runs: dict = {v: {"step_s": [], "wall_s": [], "peak_rss_mb": []} for v in VARIANTS}
            for repeat in range(args.repeats):
                for variant in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:
                    cmd = [sys.executable, __file__, "--child", case, variant,
                           "--voxels", str(args.voxels), "--dir", str(work)]  # fmt: skip
                    wall, peak = run_child(cmd, f"{case} {variant}")
                    step = json.loads((work / f"{case}-{variant}.json").read_text())["step_s"]
                    for key, value in zip(runs[variant], (step, wall, peak), strict=True):
                        runs[variant][key].append(round(value, 4))
                    print(f"{case:16s} {variant:6s} step {step:6.3f} s  process {wall:6.2f} s"
                          f"  peak {peak:7.1f} MB", flush=True)  # fmt: skip
            if case == "stats":
                tiled, whole = (np.load(work / f"sums-{v}.npy") for v in VARIANTS)
                agree = bool(np.array_equal(tiled, whole))
            elif case.endswith("-cpu"):
                tiled, whole = (
                    json.loads((work / f"{case}-{v}-digests.json").read_text()) for v in VARIANTS
                )
                agree = bool(tiled) and tiled == whole
            else:
                agree = same_chunk_files(*(work / f"{case}-{v}.zarr" for v in VARIANTS))
            medians = {v: {k: statistics.median(x) for k, x in runs[v].items()} for v in VARIANTS}
            results["cases"][case] = {
                "runs": runs, "median": medians, "results_identical": agree,
                "step_ratio_whole_to_tiled": round(
                    medians["whole"]["step_s"] / medians["tiled"]["step_s"], 2
                ),
            }  # fmt: skip
            if not agree:
                raise SystemExit(f"{case}: tiled and whole results differ")
            for v in VARIANTS:  # free the disk before the next case
                shutil.rmtree(work / f"{case}-{v}.zarr", ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for case, r in results["cases"].items():
        m = r["median"]
        tiled, whole = m["tiled"]["step_s"], m["whole"]["step_s"]
        ratio = r["step_ratio_whole_to_tiled"]
        print(f"{case}: tiled {tiled:.3f} s, whole {whole:.3f} s ({ratio}x), "
              f"identical: {r['results_identical']}")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
