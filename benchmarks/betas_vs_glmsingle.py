"""Benchmark: brainpipe's single-trial betas (types B, C, D) against GLMsingle, same data.

GLMsingle (Prince et al., eLife 2022) is the reference. It is *not* a brainpipe
dependency: it is installed from its public repository in a separate,
benchmark-only virtual environment, and this script runs it there::

    git clone https://github.com/cvnlab/GLMsingle ~/ref/GLMsingle
    python3 -m venv ~/ref/glmsingle-venv
    ~/ref/glmsingle-venv/bin/pip install numpy scipy scikit-learn nibabel \\
        matplotlib tqdm h5py fracridge pandas
    ~/ref/glmsingle-venv/bin/pip install --no-deps -e ~/ref/GLMsingle

    export GLMSINGLE_PYTHON=~/ref/glmsingle-venv/bin/python
    .venv/bin/python benchmarks/betas_vs_glmsingle.py

Sessions (one session each, at least two seeds per simulator):

- ``synthetic``: brainpipe's own generator (:mod:`brainpipe.datasets.synthetic`):
  voxel HRFs from brainpipe's double-gamma library, AR(1) noise, drifts and 5
  smooth shared noise time courses. Its onsets are not on the TR grid; GLMsingle
  takes designs on the TR grid only, so it gets onsets rounded to the nearest
  TR (a handicap of the reference on this simulator, reported in the JSON).
- ``indep``: a second simulator written here to a *different* noise model:
  voxel HRFs drawn from a continuous double-gamma family that is in neither
  library, AR(1) noise with a per-voxel coefficient and heteroscedastic level,
  shared noise from aliased respiration / cardiac oscillations and slow
  fluctuations with heavy-tailed voxel loadings, random-walk drifts and a few
  motion-like spikes; onsets on the TR grid (TR 1 s, 3 s stimuli in 4 s slots,
  30 % of trials repeated 3×, as in the issue).

Each fit runs in its own process (whole-process wall time and peak RSS from
``os.wait4``; fit time measured inside around the fit call):

- GLMsingle: ``GLM_single`` with default options (no file outputs), in the
  reference venv; types B, C, D from its memory outputs;
- brainpipe: :class:`brainpipe.glmsingle.GLMSingle` with types A-D (the timed
  run: that is what the betas stage computes), and with A-B and A-C for the
  accuracy of types B and C.

Accuracy per type: median over responsive voxels of the correlation of the
betas with the true trial amplitudes, and test-retest reliability (per voxel,
the correlation of the betas of two presentations of the same stimulus, all
pairs of presentations pooled both ways).

Usage::

    .venv/bin/python benchmarks/betas_vs_glmsingle.py                  # moderate sizes
    .venv/bin/python benchmarks/betas_vs_glmsingle.py --voxels 32000 --runs 12 \\
        --scans 300 --trials 750 --sims indep --seeds 0 --tag issue    # the issue's size

Results: a table on stdout and ``benchmarks/results/betas_vs_glmsingle[_TAG].json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


# ======================================================================================
# Simulators (parent process, brainpipe venv)
# ======================================================================================
def _double_gamma(t: np.ndarray, peak: float, under: float, ratio: float, disp: float):
    from scipy.stats import gamma

    h = gamma.pdf(t, peak / disp, scale=disp) - ratio * gamma.pdf(t, under / disp, scale=disp)
    return h / h.max()


def simulate_indep(
    seed: int, n_voxels: int, n_runs: int, n_scans: int, n_trials: int, tr: float = 1.0
) -> dict:
    """The independent simulator (see the module docstring). Raw intensities (T, V)."""
    rng = np.random.default_rng([seed, 2112])
    stimdur, slot = 3.0, 4.0
    # Trials: 30 % of trials are 3 presentations of a stimulus, the rest shown once.
    n_rep_stims = int(round(0.3 * n_trials / 3))
    n_single = n_trials - 3 * n_rep_stims
    stims = [f"r{i:04d}" for i in range(n_rep_stims) for _ in range(3)]
    stims += [f"u{i:05d}" for i in range(n_single)]
    stims = list(np.asarray(stims)[rng.permutation(len(stims))])
    per_run = np.array_split(np.arange(n_trials), n_runs)
    n_slots = int((n_scans * tr - 4.0 - 16.0) // slot)
    runs = []
    for idx in per_run:
        if len(idx) > n_slots:
            raise SystemExit(f"{len(idx)} trials do not fit in a run of {n_scans} scans")
        slots = np.sort(rng.choice(n_slots, len(idx), replace=False))
        onsets = 4.0 + slot * slots  # on the TR grid (TR 1 s)
        runs.append({"onsets": onsets, "stimuli": [stims[i] for i in idx]})
    # Voxels: 40 % responsive; HRF from a continuous family in neither library.
    responsive = rng.random(n_voxels) < 0.4
    n_hrf = 64  # distinct HRFs, each voxel takes one (keeps the simulation fast)
    t_fine = np.arange(0, 32, 0.1)
    peaks = rng.uniform(3.8, 7.2, n_hrf)
    hrfs = np.stack(
        [
            _double_gamma(
                t_fine,
                p,
                p + rng.uniform(7.0, 13.0),
                rng.uniform(0.0, 0.45),
                rng.uniform(0.7, 1.3),
            )
            for p in peaks
        ]
    )
    voxel_hrf = rng.integers(0, n_hrf, n_voxels)
    uniq = sorted(set(stims))
    stim_index = {s: i for i, s in enumerate(uniq)}
    mu = np.where(responsive, rng.gamma(2.0, 0.5, n_voxels), 0.0)
    sd_stim = np.where(responsive, rng.gamma(2.0, 0.4, n_voxels), 0.0)
    stim_effect = mu + sd_stim * rng.standard_normal((len(uniq), n_voxels))
    trial_sd = np.where(responsive, 0.6 * sd_stim + 0.1, 0.0)
    all_stims = [s for r in runs for s in r["stimuli"]]
    amp = stim_effect[[stim_index[s] for s in all_stims]]
    amp = amp + trial_sd * rng.standard_normal(amp.shape)
    # Noise.
    noise_sd = rng.lognormal(np.log(1.6), 0.35, n_voxels)
    rho = rng.uniform(0.15, 0.65, n_voxels)
    n_shared = 5
    load = rng.standard_t(3, (n_shared, n_voxels)) * 0.5
    baseline = rng.uniform(600.0, 1400.0, n_voxels)
    blocks = []
    off = 0
    for r in runs:
        T = n_scans
        n = len(r["onsets"])
        t = np.arange(T) * tr
        psc = np.zeros((T, n_voxels))
        a = amp[off : off + n]
        off += n
        for h in np.unique(voxel_hrf):
            vox = np.flatnonzero(voxel_hrf == h)
            # Trial regressors at 0.1 s, boxcar of the stimulus duration, sampled at TR.
            fine = np.zeros((int(T * tr / 0.1) + len(t_fine), n))
            for j, o in enumerate(r["onsets"]):
                i0 = int(round(o / 0.1))
                fine[i0 : i0 + int(stimdur / 0.1), j] = 1.0
            from scipy.signal import fftconvolve

            conv = fftconvolve(fine, hrfs[h][:, None], axes=0)[: int(T * tr / 0.1)]
            X = conv[:: int(round(tr / 0.1))][:T] * 0.1
            X /= max(X.max(), 1e-12)
            psc[:, vox] = X @ a[:, vox]
        # AR(1) per voxel, heteroscedastic.
        e = rng.standard_normal((T, n_voxels))
        ar = np.empty_like(e)
        ar[0] = e[0]
        s = np.sqrt(1 - rho**2)
        for k in range(1, T):
            ar[k] = rho * ar[k - 1] + s * e[k]
        psc += noise_sd * ar
        # Shared noise: aliased respiration and cardiac, slow fluctuations.
        resp = np.sin(2 * np.pi * rng.uniform(0.2, 0.33) * t + rng.uniform(0, 6.3))
        card = np.sin(2 * np.pi * rng.uniform(0.02, 0.1) * t + rng.uniform(0, 6.3))
        slow = np.cumsum(rng.standard_normal(T)) / math.sqrt(T)
        slow2 = np.convolve(rng.standard_normal(T + 20), np.ones(20) / 20, "valid")[:T]
        gs = rng.standard_normal(T) * 0.5
        courses = np.stack([resp, card, slow, slow2, gs], 1)
        courses = (courses - courses.mean(0)) / courses.std(0)
        psc += courses @ (load * rng.uniform(0.7, 1.3, (n_shared, 1)))
        # Drift: random walk per voxel, smoothed, plus a linear trend.
        walk = np.cumsum(rng.standard_normal((T, n_voxels)) * 0.05, axis=0)
        psc += walk + np.outer(np.linspace(-1, 1, T), rng.normal(0, 0.8, n_voxels))
        # Motion-like spikes: a few scans with a large global shift.
        for k in rng.choice(T, 3, replace=False):
            psc[k] += rng.normal(0, 2.0, n_voxels)
        blocks.append((baseline * (1 + psc / 100.0)).astype(np.float32))
    onsets = [r["onsets"] for r in runs]
    return {
        "raw": np.concatenate(blocks),
        "run_len": np.array([n_scans] * n_runs),
        "onsets": onsets,
        "stimuli": [np.asarray(r["stimuli"]) for r in runs],
        "amplitude": amp.astype(np.float32),
        "responsive": responsive,
        "tr": tr,
        "stimdur": stimdur,
        "onsets_on_grid": True,
        "true_hrfs": hrfs,
        "voxel_hrf": voxel_hrf,
    }


def simulate_synthetic(
    seed: int,
    n_runs: int,
    trials_per_run: int,
    voxel_size_mm: float,
    workdir: Path,
    max_voxels: int = 1500,
) -> dict:
    """One session of brainpipe's synthetic generator, raw intensities (T, V).

    Every ROI (responsive) voxel is kept, and an even sample of the others up
    to ``max_voxels`` in all.
    """
    import nibabel as nib

    from brainpipe.bids import BidsLayout, read_events, run_keys
    from brainpipe.datasets import synthetic

    root = workdir / f"synthetic-{seed}"
    n_shared = max(4, trials_per_run * n_runs // 20)
    params = synthetic.SyntheticParams.from_config(
        {
            "seed": seed,
            "n_subjects": 1,
            "n_sessions": 1,
            "n_runs": n_runs,
            "trials_per_run": trials_per_run,
            "voxel_size_mm": voxel_size_mm,
            "n_shared": n_shared,
            "noise_sd": 1.5,
            "structured_noise_sd": 1.5,
        }
    )
    synthetic.generate(root, params)
    layout = BidsLayout(root, synthetic.TASK)
    mask = np.asarray(nib.load(layout.brain_mask("01")).dataobj) > 0
    blocks, onsets, stimuli, run_len = [], [], [], []
    for key in run_keys("01", ["01"], [f"{r + 1:02d}" for r in range(n_runs)]):
        raw = np.asarray(nib.load(layout.bold(key)).dataobj, dtype=np.float32)[mask].T
        blocks.append(raw)
        ev = read_events(layout.events(key))
        onsets.append(ev["onset"].to_numpy(float))
        stimuli.append(ev["stimulus"].to_numpy(str))
        run_len.append(raw.shape[0])
    gt = synthetic.load_ground_truth(root, "01")
    responsive = gt["roi"].values != "none"
    # Keep every responsive voxel and an even sample of the others, up to max_voxels
    # (GLMsingle takes ~20 min for 1,500 voxels on a shared 2-core machine).
    rest = np.flatnonzero(~responsive)
    n_rest = max(0, min(len(rest), max_voxels - int(responsive.sum())))
    keep = np.sort(
        np.r_[np.flatnonzero(responsive), rest[np.linspace(0, len(rest) - 1, n_rest).astype(int)]]
    )
    return {
        "raw": np.concatenate(blocks)[:, keep],
        "run_len": np.asarray(run_len),
        "onsets": onsets,
        "stimuli": stimuli,
        "amplitude": gt["amplitude"].values.astype(np.float32)[:, keep],
        "responsive": responsive[keep],
        "tr": params.tr,
        "stimdur": synthetic.STIM_DURATION_S,
        "onsets_on_grid": False,
    }


def save_session(sess: dict, path: Path) -> None:
    np.savez(
        path,
        raw=sess["raw"],
        run_len=sess["run_len"],
        onsets=np.concatenate(sess["onsets"]),
        n_per_run=np.array([len(o) for o in sess["onsets"]]),
        stimuli=np.concatenate(sess["stimuli"]).astype(str),
        tr=sess["tr"],
        stimdur=sess["stimdur"],
    )


def _load_session(path: str) -> dict:
    z = np.load(path)
    bounds = np.cumsum(np.r_[0, z["run_len"]])
    tb = np.cumsum(np.r_[0, z["n_per_run"]])
    return {
        "raw": z["raw"],
        "bounds": bounds,
        "onsets": [z["onsets"][tb[i] : tb[i + 1]] for i in range(len(tb) - 1)],
        "stimuli": [z["stimuli"][tb[i] : tb[i + 1]] for i in range(len(tb) - 1)],
        "tr": float(z["tr"]),
        "stimdur": float(z["stimdur"]),
    }


# ======================================================================================
# Workers (each in its own process)
# ======================================================================================
def vm_hwm_mb() -> float:
    """Peak resident memory of this process since its exec (``VmHWM``), in MB.

    ``ru_maxrss`` of a child from ``wait4`` is not that: Linux carries the
    spawning process's peak RSS over the exec into the child's figure, so a
    worker started by a parent holding the simulated session would report at
    least the parent's peak.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    return float("nan")


def worker_glmsingle(session: str, out: str) -> None:
    """GLMsingle with default options, in the reference venv."""
    s = _load_session(session)
    t0 = time.perf_counter()
    from glmsingle.glmsingle import GLM_single

    uniq = sorted(set(np.concatenate(s["stimuli"]).tolist()))
    col = {x: i for i, x in enumerate(uniq)}
    design, data = [], []
    for i in range(len(s["onsets"])):
        T = s["bounds"][i + 1] - s["bounds"][i]
        d = np.zeros((T, len(uniq)))
        for o, st in zip(s["onsets"][i], s["stimuli"][i], strict=True):
            d[int(round(o / s["tr"])), col[st]] = 1.0
        design.append(d)
        data.append(np.ascontiguousarray(s["raw"][s["bounds"][i] : s["bounds"][i + 1]].T))
    del s["raw"]
    glm = GLM_single({"wantfileoutputs": [0, 0, 0, 0], "wantmemoryoutputs": [1, 1, 1, 1]})
    t1 = time.perf_counter()
    c1 = time.process_time()
    res = glm.fit(design, data, s["stimdur"], s["tr"], outputdir=None, figuredir=None)
    fit_s = time.perf_counter() - t1
    fit_cpu_s = time.process_time() - c1
    n_trials = sum(len(o) for o in s["onsets"])
    betas = {
        t: np.asarray(res[f"type{t.lower()}"]["betasmd"], dtype=np.float32).reshape(-1, n_trials).T
        for t in "BCD"
    }
    np.savez(
        out,
        fit_s=fit_s,
        fit_cpu_s=fit_cpu_s,
        setup_s=t1 - t0,
        pcnum=int(res["typed"]["pcnum"]),
        hrf_index=np.asarray(res["typeb"]["HRFindex"]).reshape(-1),
        onoff_r2=np.asarray(res["typea"]["onoffR2"]).reshape(-1),
        noisepool=np.asarray(res["typed"]["noisepool"]).reshape(-1),
        pcvoxels=np.asarray(res["typed"]["pcvoxels"]).reshape(-1),
        xvaltrend=np.asarray(res["typed"]["xvaltrend"]),
        frac=np.asarray(res["typed"]["FRACvalue"]).reshape(-1),
        vm_hwm_mb=vm_hwm_mb(),
        **betas,
    )


def write_psc_store(sess: dict, path: Path, chunk: int = 8192) -> None:
    """The session in % signal change (per-run mean) as a Zarr array (time, voxels).

    Chunked like preproc.zarr (every scan, ``chunk`` voxels), so the brainpipe
    worker reads it block by block as the betas stage does; each run's mean
    intensity goes to a second array ``<path>-mean`` (runs, voxels), as
    preproc.zarr's ``mean_intensity``.
    """
    import zarr

    raw = sess["raw"]
    bounds = np.cumsum(np.r_[0, sess["run_len"]])
    arr = zarr.create_array(
        str(path), shape=raw.shape, chunks=(raw.shape[0], chunk), dtype="float32"
    )
    means = zarr.create_array(
        str(path) + "-mean", shape=(len(bounds) - 1, raw.shape[1]), chunks=(1, chunk),
        dtype="float32",
    )  # fmt: skip
    for v in range(0, raw.shape[1], chunk):
        block = raw[:, v : v + chunk].astype(np.float64)
        for i in range(len(bounds) - 1):
            run = block[bounds[i] : bounds[i + 1]]
            means[i, v : v + chunk] = run.mean(0).astype(np.float32)
            run[:] = 100.0 * (run / run.mean(0) - 1.0)
        arr[:, v : v + chunk] = block.astype(np.float32)


def worker_brainpipe(
    session: str,
    out: str,
    types: str,
    threads: int,
    backend: str,
    store: str | None = None,
    psc_base: str = "session",
) -> None:
    """brainpipe's GLMSingle on % signal change data (per-run mean), as the betas stage.

    With ``store`` (the default of the parent), the data are read block by block
    from a Zarr array chunked like preproc.zarr, as the betas stage reads them;
    without, the whole session is held in memory. ``psc_base = "session"``
    rescales each run to % of the session's mean with the runs' mean
    intensities, as the betas stage does by default (``betas.psc_base``).
    """
    from brainpipe.glmsingle import GLMSingle, GLMSingleOptions, RunSpec
    from brainpipe.glmsingle import estimator as bp_estimator

    z = np.load(session)
    run_len, tr, stimdur = z["run_len"], float(z["tr"]), float(z["stimdur"])
    n_per_run = z["n_per_run"]
    bounds = np.cumsum(np.r_[0, run_len])
    tb = np.cumsum(np.r_[0, n_per_run])
    onsets = [z["onsets"][tb[i] : tb[i + 1]] for i in range(len(tb) - 1)]
    stimuli = [z["stimuli"][tb[i] : tb[i + 1]] for i in range(len(tb) - 1)]
    specs = [
        RunSpec(
            "1",
            str(i + 1),
            int(bounds[i]),
            int(bounds[i + 1]),
            onsets[i],
            np.full(len(onsets[i]), stimdur),
            stimuli[i],
        )
        for i in range(len(onsets))
    ]
    if store:
        import zarr

        data = zarr.open_array(store, mode="r")
        run_means = zarr.open_array(store + "-mean", mode="r")
    else:
        raw = z["raw"]
        data = np.empty(raw.shape, dtype=np.float32)
        run_means = np.empty((len(onsets), raw.shape[1]), dtype=np.float32)
        for i in range(len(onsets)):
            run = raw[bounds[i] : bounds[i + 1]].astype(np.float64)
            run_means[i] = run.mean(0)
            data[bounds[i] : bounds[i + 1]] = 100.0 * (run / run.mean(0) - 1.0)
        del raw
    del z
    n_voxels = data.shape[1]
    n_trials = int(n_per_run.sum())
    betas = np.zeros((n_trials, n_voxels), dtype=np.float32)

    def read(ts, vs):
        return np.asarray(data[ts, vs])

    if psc_base == "session" and hasattr(bp_estimator, "session_psc_reader"):
        read = bp_estimator.session_psc_reader(
            read, specs, lambda i, vs: np.asarray(run_means[i, vs])
        )

    def write(trials, vs, block):
        betas[trials, vs] = block

    import inspect

    from threadpoolctl import threadpool_limits

    # As the betas stage: BLAS limited to the job's threads (older estimators without
    # a ``threads`` argument are measured under the same outer limit).
    kw = {"threads": threads} if "threads" in inspect.signature(GLMSingle).parameters else {}
    t1 = time.perf_counter()
    c1 = time.process_time()
    with threadpool_limits(limits=threads):
        model = GLMSingle(
            specs,
            tr,
            n_voxels,
            GLMSingleOptions(types=tuple(types)),
            backend=backend,
            chunk=8192,
            **kw,
        )
        res = model.fit(read, write, progress=lambda m: print(m, file=sys.stderr))
    fit_s = time.perf_counter() - t1
    fit_cpu_s = time.process_time() - c1
    np.savez(
        out,
        fit_s=fit_s,
        fit_cpu_s=fit_cpu_s,
        pcnum=int(res.n_pcs_per_session["1"]),
        betas=betas,
        vm_hwm_mb=vm_hwm_mb(),
    )


# ======================================================================================
# Parent: run workers, score
# ======================================================================================
def run_worker(python: str, args: list[str], env: dict, cwd: Path | None = None) -> dict:
    """Run this script as a worker; whole-process wall time and peak RSS (os.wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, str(Path(__file__).resolve()), *args], env=env, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"worker {args[:2]} failed with exit code {code}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        # includes the parent's peak RSS at spawn time (see vm_hwm_mb); the workers
        # report their own peak, which replaces this where available
        "maxrss_wait4_mb": usage.ru_maxrss / 1024.0,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,
    }


def score(betas: np.ndarray, amp: np.ndarray, stimuli: np.ndarray, voxels: np.ndarray) -> dict:
    """Median r with the true amplitudes and median test-retest reliability over ``voxels``."""
    b = betas[:, voxels].astype(np.float64)
    a = amp[:, voxels].astype(np.float64)

    def colcorr(x, y):
        x = x - x.mean(0)
        y = y - y.mean(0)
        den = np.sqrt((x * x).sum(0) * (y * y).sum(0))
        return np.where(den > 0, (x * y).sum(0) / np.where(den > 0, den, 1), 0.0)

    r = colcorr(b, a)
    first, second = [], []
    by: dict[str, list[int]] = {}
    for t, s in enumerate(stimuli):
        by.setdefault(str(s), []).append(t)
    for idx in by.values():
        for i in range(len(idx)):
            for j in range(i + 1, len(idx)):
                first += [idx[i], idx[j]]
                second += [idx[j], idx[i]]
    rel = colcorr(b[first], b[second])
    return {"r": float(np.median(r)), "reliability": float(np.median(rel))}


def bench_session(name: str, sess: dict, args, env: dict, workdir: Path) -> dict:
    path = workdir / f"{name}.npz"
    save_session(sess, path)
    store = workdir / f"{name}-psc.zarr"
    if not args.reference_only and args.input == "zarr":
        write_psc_store(sess, store)
    n_vox = sess["raw"].shape[1]
    stimuli = np.concatenate(sess["stimuli"])
    voxels = np.flatnonzero(sess["responsive"])
    amp = sess["amplitude"]
    row: dict = {
        "session": name,
        "voxels": int(n_vox),
        "responsive_voxels": int(len(voxels)),
        "runs": len(sess["onsets"]),
        "scans": int(sess["raw"].shape[0]),
        "trials": int(len(stimuli)),
        "onsets_on_tr_grid": bool(sess["onsets_on_grid"]),
    }
    print(f"--- {name}: {n_vox} voxels, {row['runs']} runs, {row['trials']} trials", flush=True)
    if args.ref_python:
        # GLMsingle takes minutes even on small sessions: its outputs are cached by the
        # content of the session file, so re-running brainpipe alone is cheap.
        digest = hashlib.sha1(path.read_bytes()).hexdigest()[:16]
        out = Path(args.cache) / f"glmsingle-{digest}.npz"
        if not out.exists() and args.cached_reference_only:
            print(f"no cached GLMsingle output {out}: reference skipped", flush=True)
        elif not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp_out = out.with_name(out.stem + ".tmp.npz")
            cost = run_worker(
                args.ref_python,
                ["--worker", "glmsingle", str(path), str(tmp_out)],
                env,
                cwd=workdir,  # GLMsingle writes a few files to its working directory
            )
            with np.load(tmp_out) as z:
                np.savez(tmp_out, **dict(z), cost=json.dumps(cost))
            tmp_out.replace(out)
    if args.ref_python and out.exists():
        z = np.load(out)
        cost = json.loads(str(z["cost"]))
        row["glmsingle_cache"] = str(out)
        if "vm_hwm_mb" in z:
            cost["peak_rss_mb"] = float(z["vm_hwm_mb"])
            cost["peak_rss_source"] = "VmHWM of the worker"
        else:
            cost["peak_rss_source"] = "wait4 ru_maxrss: includes the parent's RSS at spawn"
        row["glmsingle"] = {
            **cost,
            "fit_s": float(z["fit_s"]),
            **({"fit_cpu_s": float(z["fit_cpu_s"])} if "fit_cpu_s" in z else {}),
            "n_pcs": int(z["pcnum"]),
            **{t: score(z[t], amp, stimuli, voxels) for t in "BCD"},
        }
        print("glmsingle", row["glmsingle"], flush=True)
    if args.reference_only:
        path.unlink()
        return row
    bp: dict = {}
    for types in ("ABCD",) if args.timed_only else ("ABCD", "ABC", "AB"):
        out = workdir / f"{name}-bp-{types}.npz"
        cost = run_worker(
            sys.executable,
            [
                "--worker",
                "brainpipe",
                str(path),
                str(out),
                "--types",
                types,
                "--threads",
                str(args.threads),
                "--backend",
                args.backend,
                *(["--store", str(store)] if args.input == "zarr" else []),
                "--psc-base",
                args.psc_base,
            ],
            env,
        )
        z = np.load(out)
        cost["peak_rss_mb"] = float(z["vm_hwm_mb"])
        cost["peak_rss_source"] = "VmHWM of the worker"
        if types == "ABCD":
            bp.update(
                {
                    **cost,
                    "fit_s": float(z["fit_s"]),
                    "fit_cpu_s": float(z["fit_cpu_s"]),
                    "n_pcs": int(z["pcnum"]),
                }
            )
        bp[types[-1]] = score(z["betas"], amp, stimuli, voxels)
        bp[f"cost_{types}"] = {**cost, "fit_s": float(z["fit_s"])}
    row["brainpipe"] = bp
    print("brainpipe", bp, flush=True)
    if "glmsingle" in row:
        g = row["glmsingle"]
        row["speedup_fit"] = g["fit_s"] / bp["fit_s"]
        row["speedup_wall"] = g["wall_s"] / bp["wall_s"]
        # a ratio only where both peaks are the workers' own (VmHWM)
        same = g.get("peak_rss_source") == bp.get("peak_rss_source")
        row["rss_ratio"] = bp["peak_rss_mb"] / g["peak_rss_mb"] if same else None
    path.unlink()
    if store.exists():
        import shutil

        shutil.rmtree(store)
        shutil.rmtree(str(store) + "-mean", ignore_errors=True)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| session | type | r GLMsingle / brainpipe | reliability GLMsingle / brainpipe |",
        "|---|---|---|---|",
    ]
    for row in rows:
        g, b = row.get("glmsingle"), row["brainpipe"]
        for t in (x for x in "BCD" if x in b):
            gr = f"{g[t]['r']:.3f}" if g else "-"
            gl = f"{g[t]['reliability']:.3f}" if g else "-"
            lines.append(
                f"| {row['session']} | {t} | {gr} / {b[t]['r']:.3f} | "
                f"{gl} / {b[t]['reliability']:.3f} |"
            )
    lines += [
        "",
        "| session | fit s GLMsingle / brainpipe | speed-up (fit, whole process) "
        "| peak RSS MB GLMsingle / brainpipe (ratio) | noise PCs G / b |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        g, b = row.get("glmsingle"), row["brainpipe"]
        if g:
            ratio = f"{row['rss_ratio']:.2f}" if row["rss_ratio"] is not None else "n/a"
            lines.append(
                f"| {row['session']} | {g['fit_s']:.1f} / {b['fit_s']:.1f} | "
                f"{row['speedup_fit']:.1f}× / {row['speedup_wall']:.1f}× | "
                f"{g['peak_rss_mb']:.0f} / {b['peak_rss_mb']:.0f} ({ratio}) | "
                f"{g['n_pcs']} / {b['n_pcs']} |"
            )
        else:
            lines.append(
                f"| {row['session']} | - / {b['fit_s']:.1f} | - | - / {b['peak_rss_mb']:.0f} "
                f"| - / {b['n_pcs']} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", choices=["glmsingle", "brainpipe"])
    ap.add_argument("worker_args", nargs="*")
    ap.add_argument("--types", default="ABCD")
    ap.add_argument("--ref-python", default=os.environ.get("GLMSINGLE_PYTHON"))
    ap.add_argument("--sims", nargs="+", default=["synthetic", "indep"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--voxels", type=int, default=1500, help="indep: voxels")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--scans", type=int, default=200, help="indep: scans per run")
    ap.add_argument("--trials", type=int, default=160, help="trials per session")
    ap.add_argument("--voxel-mm", type=float, default=8.0, help="synthetic: voxel size")
    ap.add_argument(
        "--synthetic-voxels",
        type=int,
        default=1000,
        help="synthetic: every ROI voxel and an even sample of the others, this many in all",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--tag", default="")
    ap.add_argument(
        "--cache",
        default=str(Path(tempfile.gettempdir()) / "betas_vs_glmsingle_cache"),
        help="folder of cached GLMsingle outputs (keyed by the session's content)",
    )
    ap.add_argument("--reference-only", action="store_true", help="fill the cache, skip brainpipe")
    ap.add_argument(
        "--cached-reference-only",
        action="store_true",
        help="score GLMsingle only where its output is cached; never start a reference fit",
    )
    ap.add_argument(
        "--input",
        choices=["zarr", "memory"],
        default="zarr",
        help="brainpipe reads the session from a Zarr array block by block, as the betas "
        "stage does (zarr), or holds it in memory",
    )
    ap.add_argument(
        "--timed-only",
        action="store_true",
        help="brainpipe: only the timed A-D fit (type-D accuracy), not the A-B and A-C fits",
    )
    ap.add_argument(
        "--psc-base",
        choices=["session", "run"],
        default="session",
        help="brainpipe's data in %% of each session's mean (the betas stage's default, "
        "GLMsingle's units) or of each run's mean (preproc.zarr as written)",
    )
    ap.add_argument("--store", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "glmsingle":
        worker_glmsingle(*args.worker_args)
        return
    if args.worker == "brainpipe":
        worker_brainpipe(
            *args.worker_args, args.types, args.threads, args.backend, args.store, args.psc_base
        )
        return
    if not args.ref_python:
        print("GLMSINGLE_PYTHON / --ref-python not set: brainpipe only", file=sys.stderr)
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    env["PYTHONPATH"] = str(REPO / "workflow") + os.pathsep + env.get("PYTHONPATH", "")
    rows = []
    with tempfile.TemporaryDirectory(prefix="betas_vs_glmsingle_") as tmp:
        workdir = Path(tmp)
        for sim in args.sims:
            for seed in args.seeds:
                if sim == "indep":
                    sess = simulate_indep(seed, args.voxels, args.runs, args.scans, args.trials)
                else:
                    sess = simulate_synthetic(
                        seed,
                        args.runs,
                        args.trials // args.runs,
                        args.voxel_mm,
                        workdir,
                        args.synthetic_voxels,
                    )
                rows.append(bench_session(f"{sim}-seed{seed}", sess, args, env, workdir))
                del sess
    if args.reference_only:
        return
    print()
    print(table(rows))
    out = HERE / "results" / f"betas_vs_glmsingle{'_' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(exist_ok=True)
    glm_commit = None
    if args.ref_python:
        try:
            src = subprocess.run(
                [args.ref_python, "-c", "import glmsingle;print(glmsingle.__path__[0])"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            glm_commit = subprocess.run(
                ["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
        except (subprocess.CalledProcessError, OSError):
            pass
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_end": os.getloadavg(),
        },
        "glmsingle_commit": glm_commit,
        "threads": args.threads,
        "brainpipe_input": args.input,
        "brainpipe_psc_base": args.psc_base,
        "sessions": rows,
    }
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2))
    tmp_out.replace(out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
