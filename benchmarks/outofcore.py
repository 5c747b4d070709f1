"""Out-of-core check: a betas store several times larger than a stage's ``mem_mb``.

Writes a betas.zarr-shaped store (``betas(trial, voxel)`` float32, trials chunked by
session, repeated stimuli) of ``--store-gb`` GB, then processes it in a fresh process under
``dask_resources(threads, mem_mb)``: per-voxel z-scoring statistics (mean, std), the per-voxel
noise-ceiling SNR from repeats (``brainpipe.metrics.ncsnr_from_repeats``) and a
10-component PCA over trials of the z-scored betas (the trial x trial Gram matrix), in one pass
over voxel slabs sized by ``chunk_size_for`` and read by Dask with the job's threads. The
reference is the same computation with the whole array loaded into
memory (numpy). Each side runs in its own process; whole-process wall time and peak RSS
(``ru_maxrss``) come from that process. The Dask side must stay under ``mem_mb``.

    .venv/bin/python benchmarks/outofcore.py                 # 2 GB store, mem_mb = 500
    .venv/bin/python benchmarks/outofcore.py --store-gb 4 --mem-mb 800
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "outofcore.json"
TRIALS_PER_SESSION = 750
N_COMPONENTS = 10


def write_store(path: Path, store_gb: float, seed: int = 0) -> tuple[int, int]:
    """Write a betas store of about ``store_gb`` GB session by session; return its shape."""
    import dask.array as da
    import xarray as xr

    n_sessions = 4
    n_trials = n_sessions * TRIALS_PER_SESSION
    n_voxels = int(store_gb * 1e9 / (4 * n_trials))
    voxel_chunk = 4096  # betas.voxel_chunk of config/config.yaml
    rng = np.random.default_rng(seed)
    n_stimuli = n_trials // 3  # every stimulus seen 3 times, as in NSD
    stimulus = rng.permutation(np.repeat(np.arange(n_stimuli), 3))
    signal = da.random.RandomState(seed).standard_normal(
        (n_stimuli, n_voxels), chunks=(n_stimuli, voxel_chunk)
    ).astype(np.float32)  # fmt: skip
    noise = da.random.RandomState(seed + 1).standard_normal(
        (n_trials, n_voxels), chunks=(TRIALS_PER_SESSION, voxel_chunk)
    ).astype(np.float32)  # fmt: skip
    betas = signal[stimulus].rechunk((TRIALS_PER_SESSION, voxel_chunk)) * 0.5 + noise + 1.0
    ds = xr.Dataset(
        {"betas": (("trial", "voxel"), betas.astype(np.float32))},
        coords={
            "stimulus": ("trial", np.array([f"s{s:05d}" for s in stimulus])),
            "session": (
                "trial",
                np.repeat([f"{s + 1:02d}" for s in range(n_sessions)], TRIALS_PER_SESSION),
            ),
        },  # fmt: skip
    )
    with dask.config.set(scheduler="threads", num_workers=2):
        ds.to_zarr(path, mode="w", consolidated=True, zarr_format=3)
    return n_trials, n_voxels


def process(path: Path, mem_mb: float, threads: int, mode: str) -> dict:
    """The stage: z-score statistics, ncsnr from repeats, PCA. Returns small summaries."""
    from brainpipe.compute import chunk_size_for, dask_resources
    from brainpipe.metrics import ncsnr_from_repeats
    from brainpipe.storage import open_zarr

    ds = open_zarr(path)
    stimulus = ds["stimulus"].values
    if mode == "numpy":
        x = ds["betas"].values  # the whole array in memory
        mean, std = x.mean(axis=0, dtype=np.float64), x.std(axis=0, dtype=np.float64)
        ncsnr = ncsnr_from_repeats(x, stimulus)
        z = (x - mean.astype(np.float32)) / std.astype(np.float32)
        gram = (z @ z.T).astype(np.float64)  # trial x trial
        return _summaries(mean, std, ncsnr, gram)

    with dask_resources(threads, mem_mb):
        x = ds["betas"].data  # dask, chunks (session, voxel block)
        n_trials, n_voxels = x.shape
        # Everything here is per voxel except the trial x trial Gram matrix, a sum over
        # voxels: one pass over voxel slabs, each read by Dask with the job's threads. Slab
        # size from the job's memory: ncsnr_from_repeats and z-scoring make ~4 float64
        # copies (32 bytes per trial and voxel); the Gram matrix is set aside first.
        gram = np.zeros((n_trials, n_trials))
        left = max(mem_mb - 2 * gram.nbytes / 1e6, 100)
        step = chunk_size_for(left, bytes_per_item=n_trials * 32, threads=1)
        mean, std, ncsnr = (np.empty(n_voxels) for _ in range(3))
        for start in range(0, n_voxels, step):
            part = slice(start, min(start + step, n_voxels))
            slab = x[:, part].compute()
            mean[part] = slab.mean(axis=0, dtype=np.float64)
            std[part] = slab.std(axis=0, dtype=np.float64)
            ncsnr[part] = ncsnr_from_repeats(slab, stimulus)
            slab -= mean[part].astype(np.float32)
            slab /= std[part].astype(np.float32)
            gram += slab @ slab.T
            del slab
    return _summaries(mean, std, ncsnr, gram)


def _summaries(mean, std, ncsnr, gram) -> dict:
    eigenvalues = np.linalg.eigvalsh(gram)[::-1][:N_COMPONENTS]
    return {"mean": mean, "std": std, "ncsnr": ncsnr, "singular": np.sqrt(eigenvalues)}


def child(args: argparse.Namespace) -> None:
    result = process(Path(args.store), args.mem_mb, args.threads, args.mode)
    np.savez(args.out, **result)


def run_side(store: Path, mode: str, mem_mb: float, threads: int, out: Path) -> dict:
    """Run one side in a fresh process; return its wall time and peak RSS."""
    cmd = [sys.executable, __file__, "--child", "--store", str(store), "--mode", mode,
           "--mem-mb", str(mem_mb), "--threads", str(threads), "--out", str(out)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode} side failed with status {status}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store-gb", type=float, default=2.0)
    parser.add_argument("--mem-mb", type=float, default=500.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--reference-limit-mb", type=float, default=8000, help="skip the in-memory side above"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="dask", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="brainpipe-outofcore-"))
    try:
        store = workdir / "betas.zarr"
        start = time.perf_counter()
        n_trials, n_voxels = write_store(store, args.store_gb)
        write_s = time.perf_counter() - start
        store_mb = n_trials * n_voxels * 4 / 1e6
        # The in-memory reference needs ~11x the store (ncsnr's float64 temporaries): run it
        # only where that fits comfortably in this machine's memory.
        with_reference = store_mb * 11 < args.reference_limit_mb
        rows = {"dask": run_side(store, "dask", args.mem_mb, args.threads, workdir / "dask.npz")}
        diff = {}
        if with_reference:
            rows["numpy"] = run_side(store, "numpy", args.mem_mb, args.threads, workdir / "np.npz")
            a, b = np.load(workdir / "dask.npz"), np.load(workdir / "np.npz")
            diff = {k: float(np.max(np.abs(a[k] - b[k]) / (np.abs(b[k]) + 1e-6))) for k in a.files}
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"betas store: {n_trials} trials x {n_voxels} voxels float32 = {store_mb:.0f} MB "
          f"(written in {write_s:.0f} s); stage mem_mb = {args.mem_mb:.0f}, "
          f"threads = {args.threads}")  # fmt: skip
    print(f"{'side':<34}{'wall s':>10}{'peak RSS MB':>14}")
    names = {"dask": "dask_resources (brainpipe)", "numpy": "whole array in memory (numpy)"}
    for mode, row in rows.items():
        print(f"{names[mode]:<34}{row['wall_s']:>10}{row['peak_rss_mb']:>14}")
    ratio = rows["numpy"]["peak_rss_mb"] / rows["dask"]["peak_rss_mb"] if "numpy" in rows else None
    print(f"store / mem_mb = {store_mb / args.mem_mb:.1f}x; dask peak RSS / mem_mb = "
          f"{rows['dask']['peak_rss_mb'] / args.mem_mb:.2f}"
          + (f"; numpy/dask RSS = {ratio:.1f}x" if ratio else "; in-memory reference skipped "
             f"(would need ~{store_mb * 11:.0f} MB)"))  # fmt: skip
    if diff:
        print("largest relative difference dask vs numpy: "
              + ", ".join(f"{k} {v:.1e}" for k, v in diff.items()))  # fmt: skip
    under = rows["dask"]["peak_rss_mb"] < args.mem_mb
    print("UNDER the limit" if under else "OVER the limit")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": "python benchmarks/outofcore.py " + " ".join(sys.argv[1:]),
        "store_shape": [n_trials, n_voxels], "store_mb": round(store_mb, 1),
        "mem_mb": args.mem_mb, "threads": args.threads,
        "dask": rows["dask"], "numpy_in_memory": rows.get("numpy"),
        "rss_ratio_numpy_over_dask": round(ratio, 2) if ratio else None,
        "under_limit": bool(under), "max_relative_difference": diff,
        "peak_rss_source": "resource ru_maxrss of the whole child process (os.wait4)",
    }, indent=2) + "\n")  # fmt: skip
    sys.exit(0 if under else 1)


if __name__ == "__main__":
    main()
