"""NSD ingest benchmark: one NSD-shaped session from a loopback S3 server into betas.zarr.

Writes one session in NSD's format (``/betas`` int16 (750, 83, 104, 81), ~1 GB, plus the
brain mask, ROI volumes, ncsnr and ``nsd_expdesign.mat`` of a 81×104×83 subject), serves it
from moto's S3 server (its own process), then measures in the same run, each in a fresh
process:

- reference: a plain sequential read of the same object bytes (one GET streamed to nowhere);
- brainpipe: ``fetch_dataset("nsd")`` (resumable, verified download of the small files) +
  ``make_nsd_splits`` + ``ingest_nsd_subject`` -> betas.zarr, with the registry's defaults
  (``stream_betas: true``: ingest fetches the session, verified and kept in the object
  cache, gathering the voxels as the bytes arrive); ``--no-stream`` measures fetching the
  whole session first, then ingesting the file.

Whole-process wall time and peak RSS (process tree, sampled) of each; target: peak RSS
<= 2 GB and brainpipe within 3x of the reference. One untimed GET warms the server first
(its first response is slower, whoever asks), then the two alternate ``--repeats`` times,
each brainpipe run from an empty work folder; the medians are compared. The setup's dirty
pages are flushed (``os.sync``) before anything is measured. The machine's cores are shared
with other work (the load average is recorded): rerun before trusting a small difference.

    .venv/bin/python benchmarks/ingest.py           # full size (~1 GB session), NSD's layout
    .venv/bin/python benchmarks/ingest.py --layout contiguous  # the same values, contiguous
    .venv/bin/python benchmarks/ingest.py --quick   # 750 × 40×48×40 (~110 MB)

``--layout published`` (default) writes ``/betas`` as NSD's export does: one chunk per
voxel (h5py chunks (750, 1, 1, 1)), unfiltered; the stream gathers it as it arrives,
walking the chunk index as the bytes reach it
(:class:`brainpipe.datasets.nsd_chunks.StreamedChunks`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from measure import measure  # noqa: E402

from brainpipe.datasets import nsd  # noqa: E402
from tests.nsd_fixtures import write_nsd_tree  # noqa: E402
from tests.s3_server import admin_client, make_public_bucket  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "ingest.json"
BUCKET = "natural-scenes-dataset"
FULL = (81, 104, 83)
QUICK = (40, 48, 40)


def write_session(
    path: Path, shape: tuple[int, int, int], layout: str = "published", seed: int = 0
) -> None:
    """``/betas`` int16 (750, K, J, I) written slice by slice (bounded memory).

    ``published``: chunks (750, 1, 1, 1), unfiltered, as NSD's export writes it
    (``tests/nsd_fixtures.write_betas_hdf5`` cites the source); ``contiguous``: no chunks.
    """
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = (750, 1, 1, 1) if layout == "published" else None
    with h5py.File(path, "w") as h5:
        dset = h5.create_dataset("betas", shape=(750, *shape[::-1]), dtype=np.int16, chunks=chunks)
        for k in range(shape[2]):
            dset[:, k] = rng.integers(-1500, 1500, (750, *shape[1::-1]), dtype=np.int16)


def median_run(runs: list) -> Any:
    """The run with the median wall time (the lower middle one for an even count)."""
    return sorted(runs, key=lambda m: m.wall_s)[(len(runs) - 1) // 2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REFERENCE = """
import boto3, sys
from botocore import UNSIGNED
from botocore.config import Config
c = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                 config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}))
body = c.get_object(Bucket=sys.argv[2], Key=sys.argv[3])["Body"]
n = 0
for chunk in body.iter_chunks(1 << 20):
    n += len(chunk)
print(n)
"""

# The least any verified download does: the same GET, with the MD5 the ETag holds computed
# on a second thread as the bytes arrive (no file written). Not a target, a floor: it shows
# how much of brainpipe's time the verification alone costs on this machine.
VERIFIED = """
import boto3, hashlib, queue, sys, threading
from botocore import UNSIGNED
from botocore.config import Config
c = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                 config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}))
body = c.get_object(Bucket=sys.argv[2], Key=sys.argv[3])["Body"]
md5, chunks = hashlib.md5(usedforsecurity=False), queue.Queue(8)
def work():
    while (chunk := chunks.get()) is not None:
        md5.update(chunk)
thread = threading.Thread(target=work)
thread.start()
for chunk in body.iter_chunks(1 << 20):
    chunks.put(chunk)
chunks.put(None)
thread.join()
print(md5.hexdigest())
"""

# As the fetch, ingest_splits and ingest_betas jobs would run it, in one process wrapped in
# the job scripts' context (log file; see brainpipe.logs.log_to).
BRAINPIPE = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from brainpipe.datasets import nsd
from brainpipe.datasets.registry import load_entry
from brainpipe.download import fetch_dataset
from brainpipe.logs import log_to
endpoint, work, stream = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "stream"
zscore = {"zscore": True, "shipped": False}.get(sys.argv[4]) if len(sys.argv) > 4 else None
phases = {"imports_s": time.perf_counter() - t0}
with log_to(work / "ingest.log"):
    t = time.perf_counter()
    source = {"endpoint_url": endpoint, "stimuli": False, "stream_betas": stream}
    if zscore is not None:
        source["zscore"] = zscore
    data = fetch_dataset("nsd", work / "data/nsd", subjects=["01"], sessions=["01"],
                         source=source, progress=False)
    phases["fetch_s"] = time.perf_counter() - t
    t = time.perf_counter()
    entry = load_entry("nsd")
    opts = nsd.NsdOptions.from_config({**entry.info, **entry.merged_source({"source": source})})
    nsd.make_nsd_splits(data / nsd.EXPDESIGN_KEY, ["01"], ["01"], work / "splits.tsv")
    nsd.ingest_nsd_subject(data, "01", ["01"], work / "betas.zarr", opts, work / "splits.tsv")
    phases["splits_and_ingest_s"] = time.perf_counter() - t
(work / "phases.json").write_text(json.dumps(phases))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"volume {QUICK} instead of {FULL}")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of each side")
    parser.add_argument(
        "--layout",
        choices=("published", "contiguous"),
        default="published",
        help="/betas as NSD publishes it (one chunk per voxel) or contiguous",
    )
    parser.add_argument(
        "--betas",
        choices=("default", "zscore", "shipped"),
        default="default",
        help="z-scored per session, as shipped (int16 x 300), or the registry's default",
    )
    parser.add_argument(
        "--no-stream",
        action="store_true",
        help="fetch the whole session first (stream_betas: false)",
    )
    args = parser.parse_args()
    shape = QUICK if args.quick else FULL
    stem = (
        "ingest"
        + ("_quick" if args.quick else "")
        + ("_contiguous" if args.layout == "contiguous" else "")
        + ("" if args.betas == "default" else f"_{args.betas}")
    )
    out = args.out or RESULTS.with_name(f"{stem}.json")
    work = Path(tempfile.mkdtemp(prefix="bp-ingest-bench-"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c",
         f"from moto.server import ThreadedMotoServer as S; import time; "
         f"s = S(ip_address='127.0.0.1', port={port}, verbose=False); s.start(); time.sleep(1e9)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        tree = work / "bucket"
        write_nsd_tree(tree, subjects=("01",), sessions=(), shape=shape, n_images=300)
        mask_path = tree / "nsddata/ppdata/subj01/func1pt8mm/brainmask.nii.gz"
        shutil.copy(mask_path, mask_path.with_name("valid_session01.nii.gz"))  # all valid
        key = nsd.betas_key("01", "01", nsd.NsdOptions())
        write_session(tree / key, shape, args.layout)
        size = (tree / key).stat().st_size
        for _ in range(100):
            try:
                client = admin_client(endpoint)
                make_public_bucket(client, BUCKET)
                break
            except Exception:  # noqa: BLE001 - server still starting
                time.sleep(0.2)
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                rel = path.relative_to(tree).as_posix()
                client.upload_file(str(path), BUCKET, rel, ExtraArgs={"ACL": "public-read"})
        (tree / key).unlink()  # only the server holds it now
        # Flush the setup's dirty pages (the session written, the server's copy) so the
        # measured runs are not throttled by writeback they did not cause.
        os.sync()
        import nibabel as nib

        mask = np.asarray(
            nib.load(tree / "nsddata/ppdata/subj01/func1pt8mm/brainmask.nii.gz").dataobj
        )
        n_vox = int((mask > 0).sum())
        mode = "file" if args.no_stream else "stream"
        runs = work / "runs"
        load_before = os.getloadavg()
        warm = measure([sys.executable, "-c", REFERENCE, endpoint, BUCKET, key])
        refs, floors, ours_runs, phase_runs = [], [], [], []
        for _ in range(max(1, args.repeats)):
            shutil.rmtree(runs, ignore_errors=True)
            runs.mkdir()
            os.sync()  # the previous run's store is not written back during this one
            refs.append(measure([sys.executable, "-c", REFERENCE, endpoint, BUCKET, key]))
            floors.append(measure([sys.executable, "-c", VERIFIED, endpoint, BUCKET, key]))
            ours_runs.append(
                measure([sys.executable, "-c", BRAINPIPE, endpoint, str(runs), mode, args.betas])
            )
            if ours_runs[-1].returncode or refs[-1].returncode:
                raise SystemExit(
                    f"a measured command failed: ref {refs[-1].returncode}, "
                    f"brainpipe {ours_runs[-1].returncode}"
                )
            phase_runs.append(json.loads((runs / "phases.json").read_text()))
            # how the session went in: gathered as it arrived, or read from the file after
            found = re.search(
                r"(\d+) voxels' chunks gathered as they arrived, (\d+) read from the file",
                (runs / "ingest.log").read_text(errors="replace"),
            )
            phase_runs[-1]["voxels_gathered_streaming"] = int(found[1]) if found else 0
            phase_runs[-1]["voxels_read_from_file_after"] = int(found[2]) if found else None
            # what is left after the session's last byte: its store chunks (streamed only)
            found = re.search(
                r"written into the store ([\d.]+) s after its download",
                (runs / "ingest.log").read_text(errors="replace"),
            )
            phase_runs[-1]["store_write_after_last_byte_s"] = float(found[1]) if found else None
            import xarray as xr

            store = xr.open_zarr(runs / "betas.zarr", consolidated=True)
            assert store.sizes == {"trial": 750, "voxel": n_vox, "ses": 1}, store.sizes
        load_after = os.getloadavg()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    ref, floor, ours = median_run(refs), median_run(floors), median_run(ours_runs)
    phases = phase_runs[ours_runs.index(ours)]
    ratio = ours.wall_s / ref.wall_s
    rows = [
        ("plain sequential GET (reference)", ref),
        ("GET + MD5 on a thread (verification floor)", floor),
        (f"brainpipe fetch + ingest -> betas.zarr ({mode})", ours),
    ]
    print(f"NSD session {shape} x 750 int16 = {size / 2**30:.2f} GiB, {n_vox} brain voxels kept, "
          f"/betas layout: {args.layout}")  # fmt: skip
    print(f"warm-up GET (untimed in the ratio): {warm.wall_s:.2f} s")
    print("runs, wall s: reference " + " ".join(f"{m.wall_s:.2f}" for m in refs)
          + " | GET + MD5 " + " ".join(f"{m.wall_s:.2f}" for m in floors)
          + " | brainpipe " + " ".join(f"{m.wall_s:.2f}" for m in ours_runs))  # fmt: skip
    print(f"{'median run':48s} {'wall s':>8s} {'peak tree RSS MB':>17s}")
    for name, m in rows:
        print(f"{name:48s} {m.wall_s:8.2f} {m.peak_tree_rss_mb:17.0f}")
    timed = {k: v for k, v in phases.items() if k.endswith("_s") and v is not None}
    print("brainpipe phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timed.items()))
    print(f"voxels gathered while streaming: {phases['voxels_gathered_streaming']}, "
          f"read from the file after: {phases['voxels_read_from_file_after']}")  # fmt: skip
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} (2 cores)")
    print(f"ratio brainpipe / reference: {ratio:.2f}x (target <= 3x); "
          f"peak RSS {ours.peak_tree_rss_mb:.0f} MB (target <= 2048 MB)")  # fmt: skip
    print(f"verification floor / reference: {floor.wall_s / ref.wall_s:.2f}x; "
          f"brainpipe / verification floor: {ours.wall_s / floor.wall_s:.2f}x")  # fmt: skip
    result = {
        "benchmark": "ingest",
        "volume_shape": list(shape),
        "betas_layout": args.layout,
        "betas": args.betas,
        "trials": 750,
        "object_bytes": size,
        "voxels_kept": n_vox,
        "reference": {"what": "one GET streamed, same bytes (median run)", **ref.as_dict()},
        "brainpipe": {
            "what": "fetch_dataset(nsd) + make_nsd_splits + ingest_nsd_subject (median run), "
            + ("stream_betas: false" if args.no_stream else "stream_betas: true (default)"),
            **ours.as_dict(),
        },
        "verification_floor": {
            "what": "the same GET + its MD5 on a second thread, no file (median run)",
            **floor.as_dict(),
        },
        "ratio_wall_vs_verification_floor": ours.wall_s / floor.wall_s,
        "verification_floor_ratio": floor.wall_s / ref.wall_s,
        "runs_wall_s": {
            "warm_up_reference": warm.wall_s,
            "reference": [m.wall_s for m in refs],
            "verification_floor": [m.wall_s for m in floors],
            "brainpipe": [m.wall_s for m in ours_runs],
            "brainpipe_peak_tree_rss_mb": [m.peak_tree_rss_mb for m in ours_runs],
        },
        "brainpipe_phases_s": phases,
        "ratio_wall": ratio,
        "targets": {"ratio_wall_max": 3.0, "peak_rss_mb_max": 2048},
        "meets_targets": bool(ratio <= 3.0 and ours.peak_tree_rss_mb <= 2048),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "2 cores shared with other engineers",
            "load_avg_1_5_15_before": [round(x, 2) for x in load_before],
            "load_avg_1_5_15_after": [round(x, 2) for x in load_after],
        },
        "command": " ".join(
            [
                ".venv/bin/python",
                "benchmarks/ingest.py",
                *(["--quick"] if args.quick else []),
                *(["--no-stream"] if args.no_stream else []),
                *(["--layout=contiguous"] if args.layout == "contiguous" else []),
                *([f"--betas={args.betas}"] if args.betas != "default" else []),
                *([f"--repeats={args.repeats}"] if args.repeats != 5 else []),
            ]
        ),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
