"""Gathering NSD's kept voxels: ``KeptVoxels`` against ``np.take``, same volumes, same output.

NSD's session files hold each trial as a MATLAB-written ``(K, J, I)`` volume; betas.zarr
keeps the brain voxels in C order of the NIfTI ``(I, J, K)`` volume, so the kept voxels
stride across every volume read. ``brainpipe.datasets.nsd.KeptVoxels`` reads them in file
order first, then reorders them within the row of kept voxels. Two outputs, as ingest
writes them, each against the plain ``np.take`` it replaced:

- rows: ``(750, n_voxels)`` (a session buffer; z-scoring, ingest from files):
  ``np.take(slab, flat, axis=1)`` vs ``KeptVoxels.gather``;
- blocks: every batch of 16 trials split into the ``(16, 4096)`` blocks of the session's
  chunk files (streamed int16 ingest): one ``np.take(slab, chunk_voxels, axis=1)`` per
  chunk vs ``KeptVoxels.row`` per trial, split into the blocks.

One session (750 trials, 81×104×83, the ellipsoid brain of
``tests/nsd_fixtures.write_nsd_tree``: 261,946 voxels), batches of 16 trials, each contender
in its own process, alternating ``--repeats`` times; the gather loop is timed inside
(output pages touched before), the whole process by ``measure``; outputs are compared.

    .venv/bin/python benchmarks/gather.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from measure import measure  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gather.json"

GATHER = """
import sys, time
import numpy as np
from brainpipe.datasets.nsd import KeptVoxels, hdf5_voxel_index
how, layout, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
shape, batch, width = (81, 104, 83), 16, 4096
ii, jj, kk = np.indices(shape)
centre = (np.array(shape) - 1) / 2
dist = sum(((x - c) / n) ** 2 for x, c, n in zip((ii, jj, kk), centre, shape))
flat = hdf5_voxel_index(np.argwhere(dist < 0.2), shape)
n_chunks = -(-len(flat) // width)
padded = np.full(n_chunks * width, flat[0])
padded[: len(flat)] = flat
slab = np.random.default_rng(0).integers(-1500, 1500, (batch, int(np.prod(shape))), np.int16)
if layout == "rows":
    out = np.empty((750, len(flat)), np.int16)
else:  # every batch's blocks, one after the other
    out = np.empty((-(-750 // batch), n_chunks, batch, width), np.int16)
out.fill(0)  # first touch of its pages (slow on VMs) before the timed loop, for both
kept = KeptVoxels(flat if layout == "rows" else padded)
chunk_voxels = padded.reshape(n_chunks, width)
t = time.perf_counter()
for b, t0 in enumerate(range(0, 750, batch)):
    n = min(batch, 750 - t0)
    slab[0, 0] = t0  # batches differ
    if layout == "rows" and how == "take":
        np.take(slab[:n], flat, axis=1, out=out[t0 : t0 + n], mode="clip")
    elif layout == "rows":
        kept.gather(slab[:n], out[t0 : t0 + n])
    elif how == "take":
        for block, index in zip(out[b][:, :n], chunk_voxels):
            np.take(slab[:n], index, axis=1, out=block, mode="clip")
    else:
        for r, volume in enumerate(slab[:n]):
            out[b][:, r, :] = kept.row(volume).reshape(n_chunks, width)
open(out_path + ".s", "w").write(f"{time.perf_counter() - t:.4f}")
np.save(out_path, out)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of each")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import numpy as np

    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
    work = Path(tempfile.mkdtemp(prefix="bp-gather-bench-"))
    contenders = [(layout, how) for layout in ("rows", "blocks") for how in ("take", "kept")]
    runs: dict[tuple, list] = {c: [] for c in contenders}
    loops: dict[tuple, list[float]] = {c: [] for c in contenders}
    try:
        for _ in range(args.repeats):
            for layout, how in contenders:
                path = work / f"{layout}-{how}.npy"
                m = measure([sys.executable, "-c", GATHER, how, layout, str(path)], env=env)
                if m.returncode:
                    raise SystemExit(f"{layout} {how} failed")
                runs[layout, how].append(m)
                loops[layout, how].append(float(Path(f"{path}.s").read_text()))
        same = {
            layout: bool(
                np.array_equal(
                    np.load(work / f"{layout}-take.npy"), np.load(work / f"{layout}-kept.npy")
                )
            )
            for layout in ("rows", "blocks")
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(xs: list) -> object:
        return sorted(xs, key=lambda m: getattr(m, "wall_s", m))[(len(xs) - 1) // 2]

    label = {"take": "np.take (reference)", "kept": "KeptVoxels"}
    head = "median run: 750 trials, 261,946 voxels"
    print(f"{head:42s} {'gather s':>9s} {'process s':>10s} {'RSS MB':>7s}")
    result: dict = {"benchmark": "gather", "layouts": {}}
    for layout in ("rows", "blocks"):
        ref_loop, our_loop = median(loops[layout, "take"]), median(loops[layout, "kept"])
        for how in ("take", "kept"):
            m = median(runs[layout, how])
            print(f"{layout + ': ' + label[how]:42s} {median(loops[layout, how]):9.3f} "
                  f"{m.wall_s:10.2f} {m.peak_tree_rss_mb:7.0f}")  # fmt: skip
        ratio = our_loop / ref_loop
        print(
            f"{layout}: KeptVoxels / np.take gather time {ratio:.2f}; same output: {same[layout]}"
        )
        result["layouts"][layout] = {
            "gather_s_median": {"np.take": ref_loop, "KeptVoxels": our_loop},
            "ratio_gather": ratio,
            "process": {label[h]: median(runs[layout, h]).as_dict() for h in ("take", "kept")},
            "runs_gather_s": {label[h]: loops[layout, h] for h in ("take", "kept")},
            "same_output": same[layout],
        }
    result.update(
        machine={"cpus": os.cpu_count(), "python": platform.python_version()},
        command=".venv/bin/python benchmarks/gather.py",
        date=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
