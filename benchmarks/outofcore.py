"""Out-of-core check: a betas store several times larger than a stage's ``mem_mb``.

Writes a betas.zarr-shaped store (``betas(trial, voxel)`` float32, trials chunked by
session, repeated stimuli) of ``--store-gb`` GB, then processes it in a fresh process under
``dask_resources(threads, mem_mb)``: per-voxel z-scoring statistics (mean, std), the per-voxel
noise-ceiling SNR from repeats (``brainpipe.metrics.ncsnr_from_repeats``) and a
10-component PCA over trials of the z-scored betas (the trial x trial Gram matrix,
``benchmarks/slabs.py``'s ``GramAccumulator``), in one pass over voxel slabs from
``iter_slabs`` (``benchmarks/slabs.py``) (whole storage chunks where the budget allows, width from
``chunk_size_for``, read by Dask with the job's threads). The reference is the same
computation with the whole array loaded into memory (numpy). A third process only imports
the same modules: the interpreter's floor.

Each side runs in its own process; whole-process wall time and peak RSS (``ru_maxrss`` from
``os.wait4``) come from that process. Linux counts in a child's ``ru_maxrss`` the parent's
resident high-water mark at the time of the spawn (``exec`` keeps the old address space's
peak), so the store is written by a child process too and this parent stays at the size of
its imports; each side also reports its own ``VmHWM`` (its peak after ``exec``) as a check.
The Dask side must stay under ``mem_mb``.

    .venv/bin/python benchmarks/outofcore.py                 # 2 GB store, mem_mb = 500
    .venv/bin/python benchmarks/outofcore.py --store-gb 4 --mem-mb 800
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "outofcore.json"
TRIALS_PER_SESSION = 750
N_COMPONENTS = 10


def write_store(path: Path, store_gb: float, seed: int = 0) -> tuple[int, int]:
    """Write a betas store of about ``store_gb`` GB session by session; return its shape."""
    import dask
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


#: What the measured side imports (the floor process imports exactly these).
MODULES = ("dask.array", "xarray", "zarr", "scipy.sparse.linalg", "brainpipe.compute",
           "brainpipe.metrics", "brainpipe.storage", "slabs")  # fmt: skip


def process(path: Path, mem_mb: float, threads: int, mode: str) -> dict:
    """The stage: z-score statistics, ncsnr from repeats, PCA. Returns small summaries."""
    from slabs import GramAccumulator, iter_slabs  # beside this script

    from brainpipe.compute import dask_resources
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
        betas = ds["betas"]  # lazy, chunks (session, voxel block)
        n_trials, n_voxels = betas.shape
        # Everything here is per voxel except the trial x trial Gram matrix, a sum over
        # voxels: one pass over voxel slabs. Set aside: the Gram matrix (sum + one
        # temporary) and ncsnr_from_repeats' bounded float64 blocks. Per voxel: the float32
        # slab and std's float64 deviations (12 bytes per trial).
        gram = GramAccumulator(n_trials)
        reserve_mb = (gram.nbytes + 2 * (1 << 22)) / 1e6
        mean, std, ncsnr = (np.empty(n_voxels) for _ in range(3))
        for part, slab in iter_slabs(
            betas, mem_mb, threads, bytes_per_item=n_trials * 12, reserve_mb=reserve_mb
        ):
            mean[part] = slab.mean(axis=0, dtype=np.float64)
            std[part] = slab.std(axis=0, dtype=np.float64)
            ncsnr[part] = ncsnr_from_repeats(slab, stimulus)
            slab -= mean[part].astype(np.float32)  # z-scored in place (the buffer is reused)
            slab /= std[part].astype(np.float32)
            gram.add(slab)
        return _summaries(mean, std, ncsnr, gram.result())


def _summaries(mean, std, ncsnr, gram) -> dict:
    from scipy.sparse.linalg import eigsh

    # The top components only (Lanczos): a full eigendecomposition of the trial x trial
    # matrix would cost more than the pass over the store.
    eigenvalues = np.sort(eigsh(gram, k=N_COMPONENTS, which="LA", return_eigenvectors=False))
    eigenvalues = np.clip(eigenvalues[::-1], 0, None)
    return {"mean": mean, "std": std, "ncsnr": ncsnr, "singular": np.sqrt(eigenvalues)}


def own_peak_mb() -> float:
    """This process's resident high-water mark since its ``exec`` (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    if args.mode == "write":
        shape = write_store(Path(args.store), args.store_gb)
        result = {"shape": np.array(shape)}
    elif args.mode == "imports":
        import importlib

        for name in MODULES:
            importlib.import_module(name)
        result = {}
    else:
        result = process(Path(args.store), args.mem_mb, args.threads, args.mode)
    np.savez(args.out, vmhwm_mb=own_peak_mb(), **result)


def run_side(
    store: Path, mode: str, mem_mb: float, threads: int, out: Path, store_gb: float = 0.0
) -> dict:
    """Run one side in a fresh process; return its wall time and peak RSS."""
    cmd = [sys.executable, __file__, "--child", "--store", str(store), "--mode", mode,
           "--mem-mb", str(mem_mb), "--threads", str(threads), "--out", str(out),
           "--store-gb", str(store_gb)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode} side failed with status {status}")
    with np.load(out) as saved:
        vmhwm = float(saved["vmhwm_mb"])
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "vmhwm_mb": round(vmhwm, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store-gb", type=float, default=2.0)
    parser.add_argument("--mem-mb", type=float, default=500.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--results", default=str(RESULTS), help="where the JSON goes")
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
    parent_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load_before = os.getloadavg()
    try:
        store = workdir / "betas.zarr"
        write = run_side(store, "write", args.mem_mb, args.threads, workdir / "w.npz",
                         args.store_gb)  # fmt: skip
        write_s = write["wall_s"]
        with np.load(workdir / "w.npz") as saved:
            n_trials, n_voxels = (int(v) for v in saved["shape"])
        store_mb = n_trials * n_voxels * 4 / 1e6
        # The in-memory reference holds the array and two array-sized temporaries (std's
        # float64 deviations, then the z-scored copy): run it where that fits comfortably.
        with_reference = store_mb * 3.5 + 500 < args.reference_limit_mb
        rows = {
            "imports": run_side(store, "imports", args.mem_mb, args.threads, workdir / "i.npz"),
            "dask": run_side(store, "dask", args.mem_mb, args.threads, workdir / "dask.npz"),
        }
        diff = {}
        if with_reference:
            rows["numpy"] = run_side(store, "numpy", args.mem_mb, args.threads, workdir / "np.npz")
            a, b = np.load(workdir / "dask.npz"), np.load(workdir / "np.npz")
            diff = {
                k: float(np.max(np.abs(a[k] - b[k]) / (np.abs(b[k]) + 1e-6)))
                for k in a.files
                if k != "vmhwm_mb"
            }
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()

    print(f"betas store: {n_trials} trials x {n_voxels} voxels float32 = {store_mb:.0f} MB "
          f"(written in {write_s:.0f} s); stage mem_mb = {args.mem_mb:.0f}, "
          f"threads = {args.threads}")  # fmt: skip
    print(f"{'side':<34}{'wall s':>10}{'peak RSS MB':>14}{'VmHWM MB':>10}")
    names = {
        "imports": "imports only (floor)",
        "dask": "dask_resources (brainpipe)",
        "numpy": "whole array in memory (numpy)",
    }
    for mode, row in rows.items():
        print(f"{names[mode]:<34}{row['wall_s']:>10}{row['peak_rss_mb']:>14}{row['vmhwm_mb']:>10}")
    ratio = rows["numpy"]["peak_rss_mb"] / rows["dask"]["peak_rss_mb"] if "numpy" in rows else None
    print(f"store / mem_mb = {store_mb / args.mem_mb:.1f}x; dask peak RSS / mem_mb = "
          f"{rows['dask']['peak_rss_mb'] / args.mem_mb:.2f}"
          + (f"; numpy/dask RSS = {ratio:.1f}x" if ratio else "; in-memory reference skipped "
             f"(would need ~{store_mb * 3.5 + 500:.0f} MB)"))  # fmt: skip
    if diff:
        print("largest relative difference dask vs numpy: "
              + ", ".join(f"{k} {v:.1e}" for k, v in diff.items()))  # fmt: skip
    under = rows["dask"]["peak_rss_mb"] < args.mem_mb
    print("UNDER the limit" if under else "OVER the limit")
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({
        "command": "python benchmarks/outofcore.py " + " ".join(sys.argv[1:]),
        "store_shape": [n_trials, n_voxels], "store_mb": round(store_mb, 1),
        "mem_mb": args.mem_mb, "threads": args.threads,
        "dask": rows["dask"], "numpy_in_memory": rows.get("numpy"),
        "imports_only_floor": rows["imports"], "floor_modules": list(MODULES),
        "store_write_s": write_s,
        "rss_ratio_numpy_over_dask": round(ratio, 2) if ratio else None,
        "wall_ratio_dask_over_numpy": (
            round(rows["dask"]["wall_s"] / rows["numpy"]["wall_s"], 2) if "numpy" in rows else None
        ),
        "under_limit": bool(under), "max_relative_difference": diff,
        "peak_rss_source": "resource ru_maxrss of the whole child process (os.wait4); "
                           "vmhwm_mb: the child's own /proc/self/status VmHWM",
        "parent_peak_rss_mb_at_spawn": round(parent_peak_mb, 1),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "cpus": os.cpu_count(),
    }, indent=2) + "\n")  # fmt: skip
    sys.exit(0 if under else 1)


if __name__ == "__main__":
    main()
