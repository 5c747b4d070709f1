"""Benchmark: brainpipe.align against fmralign 0.0.6, same data, same method, one run each.

Data (generated in memory, float32, deterministic from a seed, streamed in trial blocks
so neither library needs all trials at once): ``n_subjects`` subjects in one common
voxel space (fmralign needs equal voxel counts, i.e. anatomically aligned data), each
with ``n_trials`` single-trial betas. Responses come from a ``k_true``-dimensional shared
response through subject-specific maps (30 % common topography, 70 % idiosyncratic)
plus unit trial noise. ``n_shared`` stimuli are seen by every subject 3 times; half of
them (the training split) are averaged over repeats and used for fitting, the other half
measure accuracy. Default size: 8 subjects × 15,000 voxels × 10,000 trials (NSD
nsdgeneral scale; 1,000 shared stimuli, 500 for fitting).

Methods, side by side:

- ``srm``: deterministic SRM with 50 components, 10 iterations
  (``brainpipe.align.SRMAlignment`` vs ``fmralign.GroupAlignment(DetSRM(50), n_iter=10)``);
- ``piecewise_procrustes``: scaled Procrustes per parcel, voxel to voxel (100 k-means
  parcels of voxel coordinates, the same labels for both; 2 template rounds)
  (``brainpipe.align.PiecewiseAlignment`` vs ``fmralign.GroupAlignment("procrustes", labels)``).

Each (library, method) runs in a fresh worker process that generates the data, fits on
the averaged shared training stimuli, and maps every trial of every subject into the
shared space; wall time and peak RSS are of that whole process (``os.wait4``).
Accuracy: on the held-out shared stimuli (averaged over repeats), the agreement of subject
1's and subject s's shared-space responses, averaged over s = 2..n (1.0 = identical shared
spaces): ``accuracy`` is the pooled Pearson r over all entries (each component centred),
which a common rotation of the shared space leaves unchanged, so the libraries' different
template bases compare fairly; ``accuracy_per_component`` is the mean per-component r,
which depends on the basis (a PCA-ordered basis scores lower than a voxel basis for the
same alignment quality).

    .venv/bin/python benchmarks/align.py            # full size
    .venv/bin/python benchmarks/align.py --quick    # 4 subjects × 3,000 voxels × 2,000 trials
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

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {
    "full": {"n_subjects": 8, "n_voxels": 15000, "n_trials": 10000, "n_shared": 1000},
    "quick": {"n_subjects": 4, "n_voxels": 3000, "n_trials": 2000, "n_shared": 200},
}
K_TRUE = 64
N_COMPONENTS = 50
N_PARCELS = 100
REPEATS = 3
BLOCK = 2000
SEED = 0


class Data:
    """Deterministic synthetic betas, generated block by block."""

    def __init__(self, n_subjects: int, n_voxels: int, n_trials: int, n_shared: int) -> None:
        self.n_subjects, self.n_voxels, self.n_trials = n_subjects, n_voxels, n_trials
        self.n_shared = n_shared
        self.n_fit = n_shared // 2
        rng = np.random.default_rng([SEED, 1])
        n_unique = n_trials - REPEATS * n_shared
        self.response = rng.standard_normal((n_shared + n_subjects * n_unique, K_TRUE)).astype(
            np.float32
        )
        common = rng.standard_normal((K_TRUE, n_voxels))
        self.maps = []
        for s in range(n_subjects):
            own = np.random.default_rng([SEED, 2, s]).standard_normal((K_TRUE, n_voxels))
            m = (np.sqrt(0.3) * common + np.sqrt(0.7) * own) * (0.6 / np.sqrt(K_TRUE))
            self.maps.append(m.astype(np.float32))
        side = int(np.ceil(n_voxels ** (1 / 3)))
        grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
        self.xyz = (2.0 * grid[:n_voxels]).astype(np.float64)
        self.n_unique = n_unique

    def stimuli(self, s: int) -> np.ndarray:
        """Row of ``response`` shown in each trial of subject ``s``."""
        shared = np.tile(np.arange(self.n_shared), REPEATS)
        unique = self.n_shared + s * self.n_unique + np.arange(self.n_unique)
        return np.concatenate([shared, unique])

    def block(self, s: int, start: int, stop: int) -> np.ndarray:
        """Betas of trials ``start:stop`` of subject ``s``, float32 (n, n_voxels)."""
        rng = np.random.default_rng([SEED, 3, s, start])
        stim = self.stimuli(s)[start:stop]
        out = self.response[stim] @ self.maps[s]
        out += rng.standard_normal(out.shape, dtype=np.float32)
        return out

    def shared_means(self, s: int, which: str) -> np.ndarray:
        """Mean over repeats of the fitting (``fit``) or held-out (``test``) shared stimuli."""
        shared = self.block(s, 0, REPEATS * self.n_shared).astype(np.float64)
        mean = shared.reshape(REPEATS, self.n_shared, -1).mean(axis=0)
        return mean[: self.n_fit] if which == "fit" else mean[self.n_fit :]


def parcels(data: Data) -> np.ndarray:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=N_PARCELS, n_init=1, random_state=SEED).fit(data.xyz)
    return km.labels_.astype(np.int64)


def agreement(Z: list[np.ndarray]) -> tuple[float, float]:
    """Subject 1 vs each other subject on held-out stimuli, averaged over subjects.

    Returns the pooled r (all entries, after centring each component: invariant to a
    common rotation of the shared space, so bases of different libraries compare
    fairly) and the mean per-component r (depends on the basis).
    """
    from brainpipe.metrics import pearson_r

    def pooled(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(0), b - b.mean(0)
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    return (
        float(np.mean([pooled(Z[0], z) for z in Z[1:]])),
        float(np.mean([pearson_r(Z[0], z).mean() for z in Z[1:]])),
    )


def worker(lib: str, method: str, size: str) -> None:
    t0 = time.perf_counter()
    data = Data(**SIZES[size])
    fit = [data.shared_means(s, "fit") for s in range(data.n_subjects)]
    labels = parcels(data) if method == "piecewise_procrustes" else None
    t_data = time.perf_counter() - t0

    t1 = time.perf_counter()
    if lib == "brainpipe":
        from brainpipe.align import PiecewiseAlignment, ProcrustesAlignment, SRMAlignment

        if method == "srm":
            est = SRMAlignment(N_COMPONENTS, n_iter=10, tol=0.0).fit(fit)
        else:
            est = PiecewiseAlignment(
                lambda k: ProcrustesAlignment(k, n_iter=2),
                [labels] * data.n_subjects,
                n_components=10**9,  # k_p = parcel size: voxel-to-voxel, as fmralign
            ).fit(fit)

        def apply(X: np.ndarray, s: int) -> np.ndarray:
            return est.transform(X, s)
    else:
        from fmralign import GroupAlignment
        from fmralign.methods import DetSRM

        # fmralign does not standardise: give it the same z-scored data ours uses.
        stats = [(x.mean(0), np.where(x.std(0) > 1e-8, x.std(0), 1.0)) for x in fit]
        z = {
            f"sub-{s}": (x - m) / sd for s, (x, (m, sd)) in enumerate(zip(fit, stats, strict=True))
        }
        if method == "srm":
            np.random.seed(SEED)  # noqa: NPY002 - fmralign draws its SRM template from it
            est = GroupAlignment(method=DetSRM(n_components=N_COMPONENTS), n_iter=10)
        else:
            est = GroupAlignment(method="procrustes", labels=labels, n_iter=2)
        est.fit(z, y="template")
        del z

        def apply(X: np.ndarray, s: int) -> np.ndarray:
            m, sd = stats[s]
            return est.transform({f"sub-{s}": (X - m) / sd})[f"sub-{s}"]

    t_fit = time.perf_counter() - t1

    t2 = time.perf_counter()
    for s in range(data.n_subjects):
        for start in range(0, data.n_trials, BLOCK):
            apply(data.block(s, start, min(start + BLOCK, data.n_trials)), s)
    t_apply = time.perf_counter() - t2
    test = [np.asarray(apply(data.shared_means(s, "test"), s)) for s in range(data.n_subjects)]
    acc = agreement([t.reshape(t.shape[0], -1) for t in test])
    print(
        "RESULT "
        + json.dumps(
            {
                "data_s": round(t_data, 2),
                "fit_s": round(t_fit, 2),
                "apply_all_trials_s": round(t_apply, 2),
                "accuracy": round(acc[0], 4),
                "accuracy_per_component": round(acc[1], 4),
            }
        ),
        flush=True,
    )


def run_worker(lib: str, method: str, size: str, threads: int) -> dict:
    """This script as a worker process; whole-process wall time and peak RSS."""
    env = {
        **os.environ,
        **{k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", lib, method, "--size", size],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"worker {lib} {method} failed with status {status}:\n{out}")
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        **json.loads(line[len("RESULT ") :]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 subjects × 3,000 voxels × 2,000 trials")
    ap.add_argument("--methods", default="srm,piecewise_procrustes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", nargs=2, metavar=("LIB", "METHOD"), default=None)
    ap.add_argument("--size", choices=list(SIZES), default="full")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], a.worker[1], a.size)
        return
    size = "quick" if a.quick else "full"
    rows = {}
    for method in a.methods.split(","):
        for lib in ("brainpipe", "fmralign"):
            rows[f"{method}/{lib}"] = run_worker(lib, method, size, a.threads)
            print(method, lib, rows[f"{method}/{lib}"], flush=True)
    print(f"\nsize {size}: {SIZES[size]}")
    print(
        f"{'method':22s} {'library':10s} {'wall s':>8s} {'peak MB':>9s} {'fit s':>7s}"
        f" {'apply s':>8s} {'accuracy':>9s} {'per-comp':>9s}"
    )
    for key, r in rows.items():
        method, lib = key.split("/")
        print(
            f"{method:22s} {lib:10s} {r['wall_s']:8.1f} {r['peak_rss_mb']:9.0f} {r['fit_s']:7.1f}"
            f" {r['apply_all_trials_s']:8.1f} {r['accuracy']:9.3f}"
            f" {r['accuracy_per_component']:9.3f}"
        )
    ratios = {}
    for method in a.methods.split(","):
        ours, theirs = rows[f"{method}/brainpipe"], rows[f"{method}/fmralign"]
        ratios[method] = {
            "wall_fmralign_over_brainpipe": round(theirs["wall_s"] / ours["wall_s"], 2),
            "rss_fmralign_over_brainpipe": round(theirs["peak_rss_mb"] / ours["peak_rss_mb"], 2),
        }
        print(
            f"{method}: fmralign/brainpipe wall ×{ratios[method]['wall_fmralign_over_brainpipe']},"
            f" peak RSS ×{ratios[method]['rss_fmralign_over_brainpipe']}"
        )
    out = a.out or RESULTS / ("align_quick.json" if a.quick else "align.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": "benchmarks/align.py" + (" --quick" if a.quick else ""),
                "size": SIZES[size],
                "k_true": K_TRUE,
                "n_components_srm": N_COMPONENTS,
                "n_parcels": N_PARCELS,
                "threads": a.threads,
                "machine": f"{platform.node()} {os.cpu_count()} cpus",
                "note": "2 cores shared with other engineers' jobs while measured",
                "results": rows,
                "ratios": ratios,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written {out}")


if __name__ == "__main__":
    main()
