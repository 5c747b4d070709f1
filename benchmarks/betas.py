"""Benchmark: GLMsingle-level betas (types A-D) on an NSD-shaped session vs nilearn LSA.

Generates one NSD-shaped session — 81×104×83 grid at 1.8 mm with the MNI152
brain mask resampled onto it (~323k voxels), 12 runs × 226 volumes (TR 1.6 s),
750 trials in 4 s slots with blanks, NSD-like repeats within the session
(singletons, pairs, triplets) — as a ``preproc.zarr``-shaped store of
``bold(time, voxel)`` in % signal change. Then, each in its own process, whose
wall time and peak RSS (``os.wait4``) are measured whole:

- brainpipe: :class:`brainpipe.glmsingle.GLMSingle` with types A-D, chunk sized
  from ``--mem-mb``, reading the store and writing a betas Zarr, then the
  noise ceiling from repeats (everything the betas stage does);
- nilearn: ``FirstLevelModel`` (SPM HRF, cosine drift, OLS) fitted run by run
  with one regressor per trial, and one ``compute_contrast`` per trial (plain
  LSA) on a subset of voxels, reported as per-voxel throughput.

Usage::

    .venv/bin/python benchmarks/betas.py            # full NSD session
    .venv/bin/python benchmarks/betas.py --quick    # reduced size, ~1 minute

Results: a table on stdout and ``benchmarks/results/betas[_quick].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TR = 1.6


def nsd_mask(shape: tuple[int, int, int], voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """MNI152 brain mask resampled (nearest) onto a grid of ``shape`` centred on the brain."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    m = load_mni152_brain_mask(resolution=2)
    ijk = np.argwhere(m.get_fdata() > 0)
    xyz = nib.affines.apply_affine(m.affine, ijk)
    centre = (xyz.min(0) + xyz.max(0)) / 2
    aff = np.diag([voxel_mm] * 3 + [1.0])
    aff[:3, 3] = centre - voxel_mm * (np.array(shape) - 1) / 2
    r = resample_img(
        m,
        target_affine=aff,
        target_shape=shape,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    return np.asarray(r.get_fdata() > 0), aff


def schedule(n_runs: int, n_scans: int, n_trials: int, rng: np.random.Generator):
    """NSD-like trials: stimuli with 1, 2 or 3 presentations, 4 s slots with blank slots."""
    n3 = n_trials // 40
    n2 = (n_trials * 3) // 20
    n1 = n_trials - 3 * n3 - 2 * n2
    stims = [f"s{i:05d}" for i in range(n1 + n2 + n3)]
    trials = stims[:n1] + [s for s in stims[n1 : n1 + n2] for _ in range(2)]
    trials += [s for s in stims[n1 + n2 :] for _ in range(3)]
    trials = list(np.asarray(trials)[rng.permutation(len(trials))])
    per_run = np.array_split(np.arange(n_trials), n_runs)
    n_slots = int((n_scans * TR - 3.0 - 16.0) // 4.0)
    runs = []
    for r, idx in enumerate(per_run):
        slots = np.sort(rng.choice(n_slots, len(idx), replace=False))
        runs.append(
            {
                "run": f"{r + 1:02d}",
                "onsets": 3.0 + 4.0 * slots,
                "stimuli": [trials[i] for i in idx],
            }
        )
    return runs


def generate(work: Path, quick: bool, seed: int = 0) -> dict:
    """Write ``bold.zarr`` (time, voxel) float32 % signal change and ``design.json``."""
    import zarr
    from scipy.signal import lfilter

    from brainpipe.design import FINE_DT, trial_regressors
    from brainpipe.hrf import hrf_library

    shape, vox = ((40, 52, 41), 3.6) if quick else ((81, 104, 83), 1.8)
    n_runs, n_scans, n_trials = (4, 226, 250) if quick else (12, 226, 750)
    meta_path = work / "design.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("quick") == quick and (work / "bold.zarr").exists():
            return meta
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mask, _ = nsd_mask(shape, vox)
    n_vox = int(mask.sum())
    runs = schedule(n_runs, n_scans, n_trials, rng)
    kernels = hrf_library(FINE_DT, 20)
    designs = [
        np.stack(
            [
                trial_regressors(r["onsets"], np.full(len(r["onsets"]), 3.0), n_scans, TR, k)
                for k in kernels
            ]
        )
        for r in runs
    ]
    stim_ids = sorted({s for r in runs for s in r["stimuli"]})
    stim_index = {s: i for i, s in enumerate(stim_ids)}
    trial_stim = np.array([stim_index[s] for r in runs for s in r["stimuli"]])
    n_comp = 10
    response = rng.standard_normal((len(stim_ids), n_comp))
    T = n_runs * n_scans
    store = zarr.open_array(
        str(work / "bold.zarr"), mode="w", shape=(T, n_vox), chunks=(256, 4096), dtype="float32"
    )
    courses = rng.standard_normal((T, 5))
    hrf_of = rng.integers(0, 20, n_vox)
    signal_vox = rng.random(n_vox) < 0.3
    truth_sample = np.sort(
        rng.choice(np.flatnonzero(signal_vox), min(2000, int(signal_vox.sum())), replace=False)
    )
    truth = np.zeros((n_trials, len(truth_sample)), dtype=np.float32)
    step = 8192
    for v0 in range(0, n_vox, step):
        v1 = min(v0 + step, n_vox)
        c = v1 - v0
        sig = signal_vox[v0:v1]
        mapping = rng.standard_normal((n_comp, c)) * sig * (2.0 / np.sqrt(n_comp))
        amp = 2.0 * sig + response[trial_stim] @ mapping + rng.standard_normal((n_trials, c)) * sig
        block = np.empty((T, c))
        t0 = 0
        k0 = 0
        for r, X in zip(runs, designs, strict=True):
            n = len(r["onsets"])
            for h in np.unique(hrf_of[v0:v1]):
                cols = np.flatnonzero(hrf_of[v0:v1] == h)
                block[t0 : t0 + n_scans, cols] = X[h] @ amp[k0 : k0 + n, cols]
            t0 += n_scans
            k0 += n
        innov = rng.standard_normal((T, c))
        block += 1.5 * lfilter([1.0], [1.0, -0.4], innov * np.sqrt(1 - 0.16), axis=0)
        block += courses @ (rng.standard_normal((5, c)) * 0.6)
        store[:, v0:v1] = block.astype(np.float32)
        sel = (truth_sample >= v0) & (truth_sample < v1)
        truth[:, sel] = amp[:, truth_sample[sel] - v0]
    np.save(work / "truth.npy", truth)
    meta = {
        "quick": quick,
        "shape": list(shape),
        "voxel_mm": vox,
        "n_voxels": n_vox,
        "n_runs": n_runs,
        "n_scans": n_scans,
        "n_trials": n_trials,
        "n_stimuli": len(stim_ids),
        "runs": [{**r, "onsets": r["onsets"].tolist()} for r in runs],
        "truth_voxels": truth_sample.tolist(),
        "hrf_of_truth_voxels": hrf_of[truth_sample].tolist(),
    }
    meta_path.write_text(json.dumps(meta))
    return meta


# ---------------------------------------------------------------------------------------
def worker_glmsingle(work: Path, mem_mb: float, backend: str) -> None:
    import zarr

    from brainpipe.betas.store import zscore_by_session
    from brainpipe.glmsingle import GLMSingle, GLMSingleOptions, RunSpec
    from brainpipe.glmsingle.chunking import bytes_per_voxel, voxel_chunk_for_memory
    from brainpipe.metrics import ncsnr_from_repeats, noise_ceiling

    meta = json.loads((work / "design.json").read_text())
    bold = zarr.open_array(str(work / "bold.zarr"), mode="r")
    n_scans, n_vox = meta["n_scans"], meta["n_voxels"]
    specs = [
        RunSpec(
            "01",
            r["run"],
            i * n_scans,
            (i + 1) * n_scans,
            np.asarray(r["onsets"]),
            np.full(len(r["onsets"]), 3.0),
            np.asarray(r["stimuli"]),
        )
        for i, r in enumerate(meta["runs"])
    ]
    n_trials = meta["n_trials"]
    per_vox = bytes_per_voxel(
        n_scans * len(specs), n_trials, 20, max(len(s.onsets) for s in specs), n_trials
    )
    chunk = voxel_chunk_for_memory(mem_mb, per_vox, align=4096)
    out = zarr.open_array(
        str(work / "betas.zarr"),
        mode="w",
        shape=(n_trials, n_vox),
        chunks=(n_trials, 4096),
        dtype="float32",
    )

    def read(ts, vs):
        return bold[ts, vs]

    def write(trials, vs, block):
        out[trials, vs] = block

    t = time.perf_counter()
    model = GLMSingle(specs, TR, n_vox, GLMSingleOptions(), backend=backend, chunk=chunk)
    res = model.fit(
        read, write, progress=lambda m: print(f"[{time.perf_counter() - t:7.1f}s] {m}", flush=True)
    )
    stimuli = np.concatenate([s.stimuli for s in specs])
    sessions = np.full(n_trials, "01")
    ncsnr = np.zeros(n_vox, dtype=np.float32)
    for v0 in range(0, n_vox, chunk):
        vs = slice(v0, min(v0 + chunk, n_vox))
        ncsnr[vs] = ncsnr_from_repeats(zscore_by_session(out[:, vs], sessions), stimuli)
    nc3 = noise_ceiling(ncsnr, 3)
    tv = np.asarray(meta["truth_voxels"])
    truth = np.load(work / "truth.npy")
    est = np.zeros((n_trials, len(tv)), dtype=np.float32)
    for v0 in range(0, n_vox, chunk):  # one read per chunk holding truth voxels
        sel = np.flatnonzero((tv >= v0) & (tv < v0 + chunk))
        if len(sel):
            est[:, sel] = out[:, v0 : min(v0 + chunk, n_vox)][:, tv[sel] - v0]
    r = np.median([np.corrcoef(est[:, i], truth[:, i])[0, 1] for i in range(len(tv))])
    summary = {
        "chunk": chunk,
        "backend": model.xp.name,
        "n_noise_components": res.n_pcs_per_session,
        "median_ridge_fraction_signal_voxels": float(np.nanmedian(res.ridge_fraction[tv])),
        "hrf_exact_fraction": float(
            np.mean(res.hrf_index[tv] == np.asarray(meta["hrf_of_truth_voxels"]))
        ),
        "median_r_truth_signal_voxels": float(r),
        "median_nc3_signal_voxels": float(np.median(nc3[tv])),
    }
    (work / "glmsingle_summary.json").write_text(json.dumps(summary))


def worker_nilearn(work: Path, n_sub: int) -> None:
    import nibabel as nib
    import pandas as pd
    import zarr
    from nilearn.glm.first_level import FirstLevelModel

    meta = json.loads((work / "design.json").read_text())
    bold = zarr.open_array(str(work / "bold.zarr"), mode="r")
    n_scans = meta["n_scans"]
    cols = np.linspace(0, meta["n_voxels"] - 1, n_sub).astype(int)
    data = (
        bold[:, :][:, cols]
        if meta["n_voxels"] < 50_000
        else bold.get_orthogonal_selection((slice(None), cols))
    )
    mask = nib.Nifti1Image(np.ones((n_sub, 1, 1), dtype=np.uint8), np.eye(4))
    n_done = 0
    for i, r in enumerate(meta["runs"]):
        y = 100.0 + data[i * n_scans : (i + 1) * n_scans]
        img = nib.Nifti1Image(y.T.reshape(n_sub, 1, 1, n_scans).astype(np.float32), np.eye(4))
        events = pd.DataFrame(
            {
                "onset": r["onsets"],
                "duration": 3.0,
                "trial_type": [f"t{k:03d}" for k in range(len(r["onsets"]))],
            }
        )
        glm = FirstLevelModel(
            t_r=TR,
            hrf_model="spm",
            drift_model="cosine",
            high_pass=0.01,
            noise_model="ols",
            mask_img=mask,
            minimize_memory=True,
            signal_scaling=False,
        )
        glm.fit(img, events=events)
        for name in events["trial_type"]:
            glm.compute_contrast(name, output_type="effect_size")
            n_done += 1
    print(f"nilearn: {n_done} trial betas for {n_sub} voxels")


# ---------------------------------------------------------------------------------------
def measure(args: list[str], threads: int) -> dict:
    """Run this script as a worker; whole-process wall time and peak RSS."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"worker {args} failed with status {status}")
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="reduced size (3.6 mm grid, 4 runs, 250 trials)"
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--mem-mb", type=float, default=8000, help="memory budget given to the fit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--nilearn-voxels", type=int, default=None)
    ap.add_argument("--worker", choices=["glmsingle", "nilearn"], default=None)
    a = ap.parse_args()
    work = a.workdir or Path("/tmp") / f"brainpipe-bench-betas{'-quick' if a.quick else ''}"
    n_sub = a.nilearn_voxels or (1000 if a.quick else 4000)
    if a.worker == "glmsingle":
        return worker_glmsingle(work, a.mem_mb, a.backend)
    if a.worker == "nilearn":
        return worker_nilearn(work, n_sub)

    t = time.perf_counter()
    meta = generate(work, a.quick)
    print(
        f"data: {meta['n_voxels']} voxels, {meta['n_runs']} runs x {meta['n_scans']} scans, "
        f"{meta['n_trials']} trials, {meta['n_stimuli']} stimuli "
        f"({time.perf_counter() - t:.0f} s to generate)"
    )
    common = ["--workdir", str(work), "--threads", str(a.threads)] + (
        ["--quick"] if a.quick else []
    )
    ours = measure(
        ["--worker", "glmsingle", "--mem-mb", str(a.mem_mb), "--backend", a.backend, *common],
        a.threads,
    )
    ours.update(json.loads((work / "glmsingle_summary.json").read_text()))
    theirs = measure(["--worker", "nilearn", "--nilearn-voxels", str(n_sub), *common], a.threads)
    ours["voxels_per_s"] = round(meta["n_voxels"] / ours["wall_s"], 1)
    theirs["voxels_per_s"] = round(n_sub / theirs["wall_s"], 2)
    theirs["extrapolated_full_wall_s"] = round(meta["n_voxels"] / theirs["voxels_per_s"], 0)
    ratio = ours["voxels_per_s"] / theirs["voxels_per_s"]
    print()
    print(f"{'':34s}{'voxels':>9s}{'wall s':>9s}{'peak RSS MB':>13s}{'voxels/s':>11s}")
    print(
        f"{'brainpipe GLMsingle A-D':34s}{meta['n_voxels']:9d}{ours['wall_s']:9.1f}"
        f"{ours['peak_rss_mb']:13.0f}{ours['voxels_per_s']:11.1f}"
    )
    print(
        f"{'nilearn FirstLevelModel LSA (OLS)':34s}{n_sub:9d}{theirs['wall_s']:9.1f}"
        f"{theirs['peak_rss_mb']:13.0f}{theirs['voxels_per_s']:11.2f}"
    )
    print(
        f"throughput ratio (brainpipe A-D / nilearn LSA): {ratio:.1f}x; "
        f"nilearn extrapolated to {meta['n_voxels']} voxels: "
        f"{theirs['extrapolated_full_wall_s']:.0f} s"
    )
    print(
        f"targets (full session, 2 cores): wall <= 900 s, peak RSS <= 8000 MB -> "
        f"{'met' if ours['wall_s'] <= 900 and ours['peak_rss_mb'] <= 8000 else 'NOT met'}"
    )
    result = {
        "command": " ".join([".venv/bin/python", "benchmarks/betas.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "threads": a.threads,
            "platform": platform.platform(),
            "note": "2 cores shared with other engineers' jobs while measured",
        },
        "data": {
            k: meta[k]
            for k in ("shape", "voxel_mm", "n_voxels", "n_runs", "n_scans", "n_trials", "n_stimuli")
        },
        "brainpipe_glmsingle_AD": ours,
        "nilearn_lsa": {**theirs, "n_voxels": n_sub},
        "throughput_ratio": round(ratio, 1),
        "targets": {"wall_s": 900, "peak_rss_mb": 8000},
    }
    out = HERE / "results" / f"betas{'_quick' if a.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
