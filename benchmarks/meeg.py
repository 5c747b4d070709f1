"""M/EEG preprocessing of one THINGS-EEG2-sized subject: ours against MNE done plainly.

The data: one synthetic subject with THINGS-EEG2's shapes (brainpipe.meeg.synthetic's
model, no images rendered): 4 sessions of raw files at 1000 Hz, 63 EEG channels + stim;
16,540 training images, each in 2 sessions x 2 repetitions (8,270 images x 2 per session
= 16,540 training epochs per session), 200 test images x 20 repetitions per session; RSVP
at 200 ms SOA in sequences of 20 with a target each. ``--train-fraction`` scales the number
of training images.

Contenders, each a whole process measured by ``measure`` (wall time, peak RSS of the tree):

- ours: ``brainpipe.meeg.jobs.preprocess_job`` (the ``meeg_preprocess`` rule's call):
  session by session, epochs built ``batch_trials`` at a time, MVNN from training epochs,
  appended to epochs.zarr. Its peak must stay within the rule's declared ``mem_mb``.
- reference: the straightforward MNE pipeline of THINGS-EEG2's publishers
  (``preprocessing_utils.epoching``): ``np.load`` -> ``RawArray`` -> filter ->
  ``mne.Epochs(..., preload=True)`` of every trial -> ``resample`` -> MVNN (the same
  training-only Ledoit-Wolf covariance) -> one array saved with ``np.save``.

The reference holds a session's epochs at 1000 Hz (16,540 x 63 x 1001 float64 = 8.3 GB at
full size), more than this machine lets one process use; when its estimated peak exceeds
``--reference-max-mb`` the comparison runs on a second, smaller subject
(``--compare-fraction`` of the training images, every other shape the same) with both
contenders, and ours alone on the full-size subject. Outputs of the two are compared.

    .venv/bin/python benchmarks/meeg.py
    .venv/bin/python benchmarks/meeg.py --train-fraction 0.02 --compare-fraction 0.02 \
        --sessions 1 --test-reps 2 --quick      # light: both contenders under 1 GB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "workflow"))

from measure import measure  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PARAMS = {"l_freq": 0.1, "h_freq": 40.0, "tmin": -0.2, "tmax": 0.8, "sfreq": 100.0}

OURS = """
import sys
from brainpipe.meeg.jobs import preprocess_job
data, splits, out, n_ses = sys.argv[1:5]
sessions = [f"{{i:02d}}" for i in range(1, int(n_ses) + 1)]
preprocess_job("things-eeg2", data, "01", splits, out, {params}, sessions=sessions)
"""

REFERENCE = """
import sys
import mne
import numpy as np
from brainpipe.meeg.preprocess import inverse_sqrt, noise_covariance
data, out, n_ses = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = {params}
sessions = []
for s in range(1, n_ses + 1):
    parts, stims, splits = [], [], []
    for partition in ("training", "test"):
        d = np.load(f"{{data}}/raw_data/sub-01/ses-{{s:02d}}/raw_eeg_{{partition}}.npy",
                    allow_pickle=True).item()
        info = mne.create_info(d["ch_names"], d["sfreq"], d["ch_types"])
        raw = mne.io.RawArray(d["raw_eeg_data"], info, verbose="error")
        del d
        events = mne.find_events(raw, stim_channel="stim", verbose="error")
        events = events[events[:, 2] != 99999]
        raw.pick("eeg").filter(p["l_freq"], p["h_freq"], verbose="error")
        epochs = mne.Epochs(raw, events, tmin=p["tmin"], tmax=p["tmax"], baseline=(None, 0),
                            preload=True, verbose="error")
        del raw
        epochs.resample(p["sfreq"], verbose="error")
        parts.append(epochs.get_data().astype(np.float32))
        stims.append([f"{{partition}}-{{v}}" for v in events[:, 2]])
        splits.append(np.full(len(events), partition == "training"))
        times = epochs.times
        del epochs
    x = np.concatenate(parts)
    train = np.concatenate(splits)
    cov, _, _ = noise_covariance(x[train], np.concatenate(stims)[train], times)
    w = inverse_sqrt(cov)
    sessions.append(np.einsum("ij,njt->nit", w, x.astype(np.float64)).astype(np.float32))
np.save(out, np.concatenate(sessions))
"""


def declared_mem_mb() -> int:
    """``mem_mb`` of the ``meeg_preprocess`` rule (rules/meeg.smk)."""
    text = (ROOT / "rules" / "meeg.smk").read_text()
    block = text.split("rule meeg_preprocess:")[1].split("\nrule ")[0]
    return int(re.search(r"mem_mb=(?:per_attempt\()?(\d+)", block).group(1))


def make_subject(
    root: Path, train_fraction: float, n_sessions: int, seed: int = 0, test_reps: int = 20
) -> dict:
    """Write one THINGS-EEG2-shaped subject (raw files, stimuli.tsv, splits.tsv)."""
    from brainpipe.meeg import synthetic, things_eeg2
    from brainpipe.splits import make_splits

    params = synthetic.MeegSyntheticParams(sfreq=1000.0, seed=seed, sequence_length=20)
    n_train = max(2, int(round(16540 * train_fraction)))
    rng = np.random.default_rng(seed)
    latent = {"training": rng.standard_normal((n_train, params.n_sources)),
              "test": rng.standard_normal((200, params.n_sources))}  # fmt: skip
    model = synthetic.subject_model(params, 0, synthetic.eeg_info(params.sfreq))
    halves = np.array_split(np.arange(1, n_train + 1), 2)
    n_samples = 0
    for k in range(n_sessions):
        session = f"{k + 1:02d}"
        for partition, numbers, lat in (
            ("training", np.tile(halves[k % 2], 2), latent["training"][halves[k % 2] - 1]),
            ("test", np.tile(np.arange(1, 201), test_reps), latent["test"]),
        ):
            data, _ = synthetic.simulate_recording(
                params, model, lat, numbers, np.random.default_rng([seed, k, len(numbers)]),
                stim_row=True,
            )  # fmt: skip
            n_samples += data.shape[1]
            things_eeg2.write_raw_dict(
                things_eeg2.raw_path(root / "raw_data", "01", session, partition),
                data, None, list(things_eeg2.CHANNELS), params.sfreq,
            )  # fmt: skip
            del data
    ids = [things_eeg2.stimulus_id("training", n) for n in range(1, n_train + 1)]
    ids += [things_eeg2.stimulus_id("test", n) for n in range(1, 201)]
    (root / "stimuli").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"stimulus": ids, "image": "", "caption": "",
                  "shared": [0] * n_train + [1] * 200}).to_csv(
        root / "stimuli" / "stimuli.tsv", sep="\t", index=False)  # fmt: skip
    make_splits(root / "stimuli" / "stimuli.tsv", root / "splits.tsv")
    per_session_train = 2 * len(halves[0])
    return {"train_images": n_train, "sessions": n_sessions,
            "train_epochs_per_session": per_session_train,
            "test_epochs_per_session": 200 * test_reps,
            "raw_samples": n_samples, "raw_gb": n_samples * 64 * 8 / 1e9}  # fmt: skip


def run_ours(data: Path, out: Path, n_sessions: int) -> dict:
    code = OURS.format(params=repr(PARAMS))
    m = measure([sys.executable, "-c", code, str(data), str(data / "splits.tsv"), str(out),
                 str(n_sessions)])  # fmt: skip
    return m.as_dict()


def run_reference(data: Path, out: Path, n_sessions: int) -> dict:
    code = REFERENCE.format(params=repr(PARAMS))
    m = measure([sys.executable, "-c", code, str(data), str(out), str(n_sessions)])
    return m.as_dict()


def compare_outputs(ours: Path, reference: Path) -> dict:
    """Ours reads test files after training files per session, as the reference does."""
    from brainpipe.storage import open_zarr

    a = np.asarray(open_zarr(ours)["epochs"].values)
    b = np.load(reference)
    return {"same_shape": a.shape == b.shape,
            "max_abs_diff": float(np.abs(a - b).max()) if a.shape == b.shape else None,
            "max_abs": float(np.abs(b).max())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-fraction", type=float, default=1.0)
    parser.add_argument("--compare-fraction", type=float, default=0.1)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--reference-max-mb", type=float, default=5500)
    parser.add_argument("--test-reps", type=int, default=20, help="per session (THINGS: 20)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="write *_quick.json")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-meeg-"))
    mem_mb = declared_mem_mb()
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    result: dict = {"declared_mem_mb": mem_mb, "params": PARAMS, "machine": machine}
    try:
        full = work / "full"
        result["full"] = {
            "data": make_subject(full, args.train_fraction, args.sessions, test_reps=args.test_reps)
        }
        result["full"]["ours"] = run_ours(full, work / "full-epochs.zarr", args.sessions)
        result["full"]["ours"]["within_mem_mb"] = (
            result["full"]["ours"]["peak_tree_rss_mb"] <= mem_mb
        )
        per_session = result["full"]["data"]["train_epochs_per_session"]
        ref_mb = (per_session * 63 * 1001 * 8 + per_session * 0.25 * 64 * 1000 * 8 * 2) / 2**20
        result["reference_estimated_peak_mb"] = ref_mb
        if ref_mb <= args.reference_max_mb:
            cmp_dir, cmp_fraction = full, args.train_fraction
            ours_cmp = result["full"]["ours"]
            cmp_out = work / "full-epochs.zarr"
        else:
            cmp_dir, cmp_fraction = work / "compare", args.compare_fraction
            result["compare"] = {
                "data": make_subject(cmp_dir, cmp_fraction, args.sessions, test_reps=args.test_reps)
            }
            cmp_out = work / "compare-epochs.zarr"
            ours_cmp = run_ours(cmp_dir, cmp_out, args.sessions)
        ref = run_reference(cmp_dir, work / "reference.npy", args.sessions)
        block = result.setdefault("compare", {"data": result["full"]["data"]})
        block.update({"train_fraction": cmp_fraction, "ours": ours_cmp, "reference": ref})
        block["time_ratio_ours_over_reference"] = ours_cmp["wall_s"] / ref["wall_s"]
        block["peak_rss_ratio_ours_over_reference"] = (
            ours_cmp["peak_tree_rss_mb"] / ref["peak_tree_rss_mb"]
        )
        block["outputs"] = compare_outputs(cmp_out, work / "reference.npy")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    name = "meeg_quick.json" if args.quick else "meeg.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
