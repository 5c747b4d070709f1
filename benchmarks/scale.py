"""The model-zoo jobs of one NSD-sized subject: each job's whole-process wall time and peak
RSS against the mem_mb its rule declares, and the projection to NSD's 8 subjects.

The subject has NSD's shape (Allen et al. 2022, Nat. Neurosci.): 40 sessions x 750 trials,
10,000 images each shown 3 times, 1,000 of them the shared test images, ~15,000 nsdgeneral
voxels at 1.8 mm. Its betas are generated directly into a ``betas.zarr`` built by
:class:`brainpipe.betas.store.BetasLayout` (the store every producer writes), chunked as
the workflow chunks them (a session of trials x ``betas.voxel_chunk`` voxels). Responses
are a linear function of a 32-dimensional latent per image plus trial noise; the two
feature stores (an "encoding" store of 64 PCA components and a 512-dimensional
"embedding" store for the decoders) are noisy linear views of the same latent, written by
:func:`brainpipe.features.pca.build_feature_store` through a feature model registered
here. So the models have something real to find, and the stores are what the workflow's
own stages write.

Each job then runs in its own process exactly as the rule's script calls it: the
``features`` job of each store (:func:`brainpipe.features.pca.build_feature_store`),
``train`` and ``evaluate`` per model (:func:`brainpipe.models.jobs.train_job`,
:func:`brainpipe.models.jobs.evaluate_job`, with the config's ``model_params`` and
``evaluate`` blocks), then ``summary`` and ``report``. Its wall time is measured around
the process, its peak RSS is the process's own high-water mark (``VmHWM``). The declared
``mem_mb`` is what the rule asks for on the first attempt: for train, the model's
:meth:`~brainpipe.models.registry.ModelSpec.job_mem_mb` for this store (what
``rules/common.smk`` declares), for the others the figure in their ``.smk`` file.

What this leaves out: preprocess, betas and align (they have their own benchmarks:
``benchmarks/betas.py``, ``benchmarks/betas_vs_glmsingle.py``, ``benchmarks/align.py``),
feature extraction from images (``benchmarks/features.py``) and Snakemake's own overhead.

Run it under the shared lock, with a time limit (the betas are 1.8 GB on disk)::

    .venv/bin/python benchmarks/scale.py

Results: ``benchmarks/results/scale.json`` (``--sessions 4 --voxels 2000``: a smoke test of
the script itself, written to ``scale_small.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from brainpipe.betas.store import BetasLayout, close_store, placeholder_vars  # noqa: E402
from brainpipe.storage import atomic_path, provenance_attrs  # noqa: E402

TRIALS_PER_SESSION = 750
REPEATS = 3
LATENT = 32
ROI = "nsdgeneral"
SUBJECT = "01"
#: Feature stores: name -> (raw width, PCA components kept). ``text64`` is banded ridge's
#: second band (another noisy view of the latent).
FEATURES = {"latent64": (64, 64), "embed512": (512, 512), "text64": (64, 64)}
#: The spatial store of the attention readout: (tokens, channels) per image.
SPATIAL = "tokens"
#: The feature stores each model reads (the first is its store in the results).
MODEL_FEATURES = {
    "ridge": ["latent64"],
    "bandedridge": ["latent64", "text64"],
    "attention": [SPATIAL],
    "ridgedecoder": ["embed512"],
    "mlpdecoder": ["embed512"],
    "sharedbackbone": ["embed512"],
}


def stimulus_ids(n_images: int) -> np.ndarray:
    return np.array([f"nsd{i:05d}" for i in range(n_images)])


def write_betas(
    out: Path,
    subject: str,
    latent: np.ndarray,
    order: np.ndarray,
    weights: np.ndarray,
    gain: np.ndarray,
    rng: np.random.Generator,
    *,
    trials_per_session: int = TRIALS_PER_SESSION,
    runs_per_session: int = 12,
    rois: dict[str, np.ndarray] | None = None,
    attrs: dict | None = None,
) -> None:
    """A subject's ``betas.zarr``: trial ``t`` shows image ``order[t]``, its betas are
    ``latent @ weights * gain`` plus unit noise, a session of trials at a time.

    The defaults are NSD's design (750 trials in 12 runs per session, every voxel in
    ``nsdgeneral``); another dataset's sessions, runs, ROI masks (``roi_<name>`` voxel
    coords, boolean) and extra attrs (e.g. ``affine``) can be given."""
    n_trials, n_voxels = len(order), weights.shape[1]
    n_sessions = n_trials // trials_per_session
    stimuli = stimulus_ids(len(latent))
    sessions = np.repeat([f"{s + 1:02d}" for s in range(n_sessions)], trials_per_session)
    per_run = -(-trials_per_session // runs_per_session)
    run_labels = np.repeat([f"{r:02d}" for r in range(1, runs_per_session + 1)], per_run)
    if rois is None:
        rois = {ROI: np.ones(n_voxels, dtype=bool)}
    ijk = np.stack(np.unravel_index(np.arange(n_voxels), (81, 104, 83)), axis=1)
    layout = BetasLayout(
        data_vars=placeholder_vars(n_voxels),
        coords={
            "stimulus": ("trial", stimuli[order]),
            "session": ("trial", sessions),
            "run": ("trial", np.tile(run_labels[:trials_per_session], n_sessions)),
            "onset": ("trial", np.tile(np.arange(trials_per_session) * 4.0, n_sessions)),
            # voxel positions in NSD's 1.8 mm grid (81 x 104 x 83), 1.8 mm apart
            **{c: ("voxel", v) for c, v in zip("ijk", ijk.T, strict=True)},
            **{c: ("voxel", v * 1.8) for c, v in zip("xyz", ijk.T, strict=True)},
            **{f"roi_{name}": ("voxel", mask) for name, mask in rois.items()},
        },
        attrs={
            "subject": subject,
            "space": "nsd-func1pt8mm",
            "tr": 1.6,
            "units": "z-score",
            "method": "synthetic (benchmarks/scale.py)",
            "stage": "betas",
            **provenance_attrs(None),
            **(attrs or {}),
        },
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        betas = layout.write(tmp, (n_trials, n_voxels), (trials_per_session, 4096))
        try:
            for s in range(n_sessions):
                rows = slice(s * trials_per_session, (s + 1) * trials_per_session)
                signal = latent[order[rows]] @ weights * gain
                noise = rng.standard_normal(signal.shape, dtype=np.float32)
                betas[rows, :] = signal + noise
        finally:
            layout.finish()
        close_store(tmp)


def make_subject(work: Path, n_sessions: int, n_voxels: int, n_test: int, seed: int) -> dict:
    """splits.tsv, stimuli table, betas.zarr and the two feature stores of one subject."""
    rng = np.random.default_rng(seed)
    n_trials = n_sessions * TRIALS_PER_SESSION
    n_images = n_trials // REPEATS
    stimuli = stimulus_ids(n_images)
    split = np.where(np.arange(n_images) < n_test, "test", "train")
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"stimulus": stimuli, "split": split}).to_csv(
        work / "splits.tsv", sep="\t", index=False
    )
    pd.DataFrame({"stimulus": stimuli, "image": [f"{s}.png" for s in stimuli]}).to_csv(
        data / "stimuli.tsv", sep="\t", index=False
    )
    latent = rng.standard_normal((n_images, LATENT)).astype(np.float32)
    np.save(work / "latent.npy", latent)

    # every image 3 times, in a random order over the sessions (NSD's design, not its order)
    order = rng.permutation(np.repeat(np.arange(n_images), REPEATS))
    weights = (rng.standard_normal((LATENT, n_voxels)) / np.sqrt(LATENT)).astype(np.float32)
    gain = rng.uniform(0.2, 1.0, n_voxels).astype(np.float32)  # per-voxel SNR
    t0 = time.perf_counter()
    write_betas(work / "betas.zarr", SUBJECT, latent, order, weights, gain, rng)
    write_s = time.perf_counter() - t0

    for name, (width, _) in FEATURES.items():
        np.save(
            work / f"mixing_{name}.npy", rng.standard_normal((LATENT, width)).astype(np.float32)
        )
    return {
        "n_sessions": n_sessions,
        "n_trials": n_trials,
        "n_images": n_images,
        "n_test_images": n_test,
        "n_voxels": n_voxels,
        "betas_gb": round(n_trials * n_voxels * 4 / 1e9, 2),
        "write_betas_s": round(write_s, 1),
    }


def make_other_subject(work: Path, subject: str, seed: int) -> Path:
    """Another subject who saw the same images (``sub-{subject}/betas.zarr``): its own voxel
    weights, trial order and noise over the same latent (the shared backbone's pretraining
    reads every subject's betas)."""
    out = work / f"sub-{subject}" / "betas.zarr"
    if out.exists():
        return out
    rng = np.random.default_rng([seed, int(subject)])
    latent = np.load(work / "latent.npy")
    n_voxels = json.loads((work / "subject.json").read_text())["n_voxels"]
    order = rng.permutation(np.repeat(np.arange(len(latent)), REPEATS))
    weights = (rng.standard_normal((LATENT, n_voxels)) / np.sqrt(LATENT)).astype(np.float32)
    gain = rng.uniform(0.2, 1.0, n_voxels).astype(np.float32)
    write_betas(out, subject, latent, order, weights, gain, rng)
    return out


#: The network whose token layer the spatial store is built from, as the workflow builds it
#: (``features.networks.<label>.tokens``, the spatial_features rule): DINOv2 ViT-B/14, whose
#: last layer at 224 px is 257 tokens (CLS + 16 x 16 patches) x 768 channels.
TOKEN_NETWORK = {"network": "dinov2", "layers": ["hidden12"], "tokens": ["hidden12"]}


def spatial_label(tokens: int, channels: int) -> str:
    """The features label of the spatial store (the 64 x 32 default keeps its old name)."""
    return SPATIAL if (tokens, channels) == (64, 32) else f"{SPATIAL}{tokens}x{channels}"


def write_token_store(work: Path, label: str, tokens: int, channels: int) -> Path:
    """The network feature store's token layer (``hidden12_tokens(stimulus, token,
    channel)``, float16 in 32 MB chunks of stimuli, as ``brainpipe.features.extract`` writes
    it), generated directly a chunk at a time: per image a noisy linear view of the latent.
    Extracting a network's tokens from images is ``benchmarks/features.py``'s to measure."""
    import zarr

    out = work / f"{label}.zarr"
    if out.exists():
        return out
    latent = np.load(work / "latent.npy")
    n = len(latent)
    rng = np.random.default_rng(tokens * channels)
    mixing = rng.standard_normal((LATENT, tokens * channels), dtype=np.float32)
    rows = max(1, min(n, (32 << 20) // (tokens * channels * 2)))
    with atomic_path(out) as tmp:
        import dask.array as da
        import xarray as xr

        from brainpipe.storage import portable_strings, quiet_consolidated

        empty = da.zeros((n, tokens, channels), chunks=(rows, tokens, channels), dtype="float16")
        ds = xr.Dataset(
            {"hidden12_tokens": (("stimulus", "hidden12_token", "hidden12_channel"), empty)},
            coords={"stimulus": stimulus_ids(n).astype(object)},
        )
        with quiet_consolidated():
            portable_strings(ds).to_zarr(tmp, mode="w", compute=False, consolidated=True,
                                         zarr_format=3)  # fmt: skip
        var = zarr.open_group(str(tmp), mode="r+")["hidden12_tokens"]
        for start in range(0, n, rows):
            block = latent[start : start + rows] @ mixing
            block += rng.standard_normal(block.shape, dtype=np.float32)
            var[start : start + len(block)] = block.reshape(-1, tokens, channels) / 3
    return out


def token_config(label: str) -> dict:
    """The ``features`` config block that makes ``label`` a network with a token layer."""
    return {"networks": {label: dict(TOKEN_NETWORK)}}


def build_spatial(work: str, label: str) -> None:
    """The ``spatial_features`` job of a network with a token layer
    (:func:`brainpipe.features.spatial.build_spatial_store_from_network`, what the rule's
    script calls): channels z-scored on training stimuli, chunked by stimulus rows."""
    from brainpipe.features.spatial import build_spatial_store_from_network

    work_dir = Path(work)
    build_spatial_store_from_network(
        label, work_dir / f"{label}.zarr", work_dir / "data" / "stimuli.tsv",
        work_dir / "splits.tsv", work_dir / "spatial" / f"{label}.zarr",
        config={"features": token_config(label)},
    )  # fmt: skip


def build_features(work: str, name: str, n_components: int | None = None) -> None:
    """The ``features`` job of feature model ``name``: a noisy linear view of the latent
    (registered as a feature model; its mixing matrix ``mixing_{name}.npy`` in ``work``),
    PCA on the training stimuli (``n_components``, default :data:`FEATURES`'), the Zarr
    store."""
    from brainpipe.features import FEATURE_MODELS, register_feature_model
    from brainpipe.features.pca import build_feature_store

    work_dir = Path(work)
    latent = np.load(work_dir / "latent.npy")
    mixing = np.load(work_dir / f"mixing_{name}.npy")
    stimuli = stimulus_ids(len(latent))
    if name not in FEATURE_MODELS:

        @register_feature_model(name)
        def view(stim, stimuli_dir, train_mask):
            own = np.random.default_rng(mixing.shape[1])
            idx = pd.Index(stimuli).get_indexer(stim["stimulus"].astype(str))
            raw = latent[idx] @ mixing
            return raw + own.standard_normal(raw.shape, dtype=np.float32)

    build_feature_store(
        name,
        work_dir / "data" / "stimuli.tsv",
        work_dir / "splits.tsv",
        work_dir / f"{name}.zarr",
        n_components or FEATURES[name][1],
    )


def declared_mem_mb(rule: str) -> int:
    """A rule's mem_mb (first attempt) as its .smk file declares it."""
    path = {"evaluate": "evaluate", "summary": "evaluate", "report": "report",
            "spatial_features": "features"}[rule]  # fmt: skip
    text = (ROOT / "rules" / f"{path}.smk").read_text()
    body = text.split(f"rule {rule}:", 1)[1].split("\nrule ", 1)[0]
    return int(re.search(r"mem_mb=(?:per_attempt\()?(\d+)", body).group(1))


def features_mem_mb() -> int:
    """The features rule's mem_mb for a feature model that is not a network."""
    from brainpipe.features.weights import network_resource

    return network_resource({}, "mem_mb", 2000, 8000)(argparse.Namespace(features="x"))


JOB = """
import json, sys
sys.path[:0] = [{workflow!r}, {benchmarks!r}]
from brainpipe.models.jobs import evaluate_job, pretrain_job, train_job
a = json.loads({args!r})
if a["stage"] == "features":
    import scale
    scale.build_features(a["work"], a["name"])
elif a["stage"] == "spatial_features":
    import scale
    scale.build_spatial(a["work"], a["label"])
elif a["stage"] == "pretrain":
    pretrain_job(a["model"], a["roi"], a["betas_paths"], a["features"], a["splits"],
                 a["out_paths"], config=a["config"])
elif a["stage"] == "train":
    train_job(a["model"], a["subject"], a["roi"], a["betas"], a["features"], a["splits"],
              a["weights"], a["predictions"], config=a["config"],
              pretrained_path=a.get("pretrained"))
elif a["stage"] == "evaluate":
    evaluate_job(a["model"], a["roi"], a["betas"], a["predictions"], a["metrics"], a["scores"],
                 labels=a["labels"], embedding_path=a["embedding"], config=a["config"],
                 n_boot=a["n_boot"], n_way=a["n_way"], draws=a["draws"])
elif a["stage"] == "summary":
    from brainpipe.models.summary import collect_summary
    collect_summary(a["metrics"], a["summary"])
else:
    from brainpipe.report import ReportInputs, write_report
    inputs = ReportInputs(scores=a["scores"], betas={{a["subject"]: a["betas"]}},
                          dataset="scale", run={{"dataset": "scale", "subjects": [a["subject"]]}})
    write_report(a["summary"], a["report"], "brainpipe: scale", inputs, a["figures"])
# this process's own peak RSS: ru_maxrss of a child also counts the parent's pages it had
# between fork and exec (the benchmark's ~300 MB), VmHWM is the exec'd process's alone
with open(a["hwm"], "w") as f:
    f.write([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1])
"""


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_job(args: dict, threads: int, limit_mb: float, limit_s: float) -> dict:
    """One job in its own process: wall seconds and peak RSS (MiB, the process's VmHWM).

    A job whose RSS passes ``limit_mb`` is killed (the machine is shared) and reported
    with ``killed_over_mb``; one still running after ``limit_s`` seconds is killed and
    reported with ``killed_after_s`` (its peak RSS so far is a lower bound).
    """
    hwm = Path(tempfile.mkdtemp(prefix="brainpipe-hwm-")) / "kb"
    args = {**args, "hwm": str(hwm)}
    code = JOB.format(
        workflow=str(ROOT / "workflow"), benchmarks=str(ROOT / "benchmarks"), args=json.dumps(args)
    )
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                      "OPENBLAS_NUM_THREADS")}}  # fmt: skip
    t0 = time.perf_counter()
    err_file = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=err_file)
    killed: dict = {}
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if _rss_mb(proc.pid) > limit_mb:
            killed = {"killed_over_mb": limit_mb}
        elif time.perf_counter() - t0 > limit_s:
            killed = {"killed_after_s": limit_s}
        if killed:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    wall = time.perf_counter() - t0
    code_ok = proc.returncode == 0
    out = {"seconds": round(wall, 1), "max_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    if killed:  # ru_maxrss: an upper bound on the job's own peak so far
        return {**out, **killed}
    if not code_ok:
        err_file.seek(0)
        err = err_file.read().decode(errors="replace")
        raise RuntimeError(f"{args['stage']} {args.get('model', '')} failed:\n{err[-3000:]}")
    out["max_rss_mb"] = round(int(hwm.read_text()) / 1024, 1)
    shutil.rmtree(hwm.parent, ignore_errors=True)
    return out


def _job_key(job: dict) -> tuple:
    return tuple(job.get(k) for k in ("rule", "model", "features", "n_subjects", "max_steps"))


def _drop_key(text: str) -> tuple:
    """``rule:model:features[:n_subjects[:max_steps]]`` (empty fields: none) as a job key."""
    parts = text.split(":") + [""] * 5
    rule, model, features, n_subjects, max_steps = parts[:5]
    return (rule, model or None, features or None, int(n_subjects) if n_subjects else None,
            int(max_steps) if max_steps else None)  # fmt: skip


def schedule_steps(model: str, n_rows: list[int], config: dict) -> int:
    """Optimizer steps a torch model's training (or the shared backbone's pretraining, one
    entry of ``n_rows`` per subject) runs under ``config``: its epochs capped at
    ``max_steps`` (:func:`brainpipe.models.torch_utils.capped_epochs`) x mini-batches per
    epoch."""
    from brainpipe.models import model_params
    from brainpipe.models.torch_utils import capped_epochs

    params = model_params(model, config)
    bs = int(params["batch_size"])
    per_epoch = sum(sum(1 for i in range(0, n, bs) if min(bs, n - i) > 1) for n in n_rows)
    return capped_epochs(n_rows, params, int(params["epochs"])) * per_epoch


def label_steps(job: dict, subject: dict, config: dict) -> None:
    """Record the optimizer steps a torch job ran (``steps``) and those of the config's
    schedule (``full_steps``), and for a job run with fewer steps the projection of its
    wall time to the full schedule (``projected_seconds_full_steps``: the run's time plus
    its fitting time per step for the missing steps). Derived from what the entry holds
    (older entries included): the fit's epochs for train, the subjects for pretrain."""
    from brainpipe.models import get_model

    model = job.get("model")
    if not model or not get_model(model).torch or job["rule"] not in ("train", "pretrain"):
        return
    n_train = subject["n_trials"] - subject["n_test_images"] * REPEATS
    if job["rule"] == "pretrain":
        rows = [n_train] * (int(job["n_subjects"]) - 1)
        run = json.loads(json.dumps(config))
        if job.get("max_steps"):
            run.setdefault("model_params", {}).setdefault(model, {})["max_steps"] = job["max_steps"]
        job["steps"] = schedule_steps(model, rows, run)
        job["full_steps"] = schedule_steps(model, rows, config)
    else:
        if get_model(model).cross_subject:  # a fine-tune: epochs chosen by CV folds
            return
        fit = job.get("fit") or {}
        job["full_steps"] = schedule_steps(model, [n_train], config)
        if "steps" not in fit and "max_steps" in job:
            return  # an older capped entry without its fit's epochs: steps unknown
        # an entry without its fit's epochs and no cap ran the config's schedule
        job["steps"] = int(fit.get("steps", job["full_steps"]))
        if job["steps"] < job["full_steps"] and "fit_seconds" in fit:
            per_step = float(fit["fit_seconds"]) / job["steps"]
            job["projected_seconds_full_steps"] = round(
                job["seconds"] + per_step * (job["full_steps"] - job["steps"]), 1
            )


def summarise(jobs: list[dict], subject: dict, notes: dict, commands: list[str]) -> dict:
    """The result file's figures from its job rows: within memory, job-seconds for one
    subject and projected to NSD's 8, the largest job."""
    # a train job run with fewer steps (``max_steps``) is no measure of the job's time: a
    # model measured only so counts with its projection to the full schedule
    per_subject = [j for j in jobs if j["rule"] in ("train", "evaluate") and "max_steps" not in j]
    full = {(j["rule"], j.get("model"), j.get("features")) for j in per_subject}
    projected = {}
    for j in jobs:
        key = (j["rule"], j.get("model"), j.get("features"))
        if "projected_seconds_full_steps" in j and key not in full:
            if key not in projected or j["steps"] > projected[key]["steps"]:
                projected[key] = j
    # A pretrain job pretrains once per held-out subject, on all the others: measured for
    # len(held_out) of them, it runs 8 at NSD (each on 7 subjects, the same capped steps).
    # Per model, the run with the config's steps and the most subjects; an upper bound, as
    # the shared backbone writes each subject's scratch file once per job, not per held-out
    # subject.
    pretrain: dict[str, dict] = {}
    for j in jobs:
        if j["rule"] == "pretrain" and "max_steps" not in j:
            best = pretrain.get(j["model"])
            if best is None or j.get("n_subjects", 0) > best.get("n_subjects", 0):
                pretrain[j["model"]] = j
    shared = [j for j in jobs if j["rule"] not in ("train", "evaluate", "pretrain")]
    subject_s = sum(j["seconds"] for j in per_subject) + sum(
        j["projected_seconds_full_steps"] for j in projected.values()
    )
    shared_s = sum(j["seconds"] for j in shared)
    pretrain_8_s = sum(8 * j["seconds"] / len(j.get("held_out") or [1]) for j in pretrain.values())
    return {
        "command": commands[0] if len(commands) == 1 else commands,
        "subject": subject,
        "notes": notes,
        "jobs": jobs,
        "all_within_mem_mb": all(
            j["rss_over_mem"] <= 1 and "killed_over_mb" not in j for j in jobs
        ),  # fmt: skip
        "all_finished": not any(k.startswith("killed") for j in jobs for k in j),
        "job_seconds_one_subject": round(subject_s + shared_s, 1),
        # train jobs measured with fewer steps only: their projection to the full schedule
        "projected_from_fewer_steps": [
            f"{r} {m} {f}: {j['steps']} of {j['full_steps']} steps measured"
            for (r, m, f), j in sorted(projected.items())
        ],
        # train and evaluate run once per subject and are independent; features run once
        # per dataset; summary and report once (they read one small file per job); the
        # pretrain job once per dataset, once per held-out subject inside it. So 8
        # subjects: 8 x the per-subject jobs + the shared ones (serially; divided by the
        # jobs that fit side by side on a cluster), each job's memory unchanged but the
        # pretrain job's, which reads every subject: counted here only as measured with 8.
        "projected_job_seconds_8_subjects_serial": round(
            8 * subject_s + shared_s + pretrain_8_s, 1
        ),
        "projected_peak_job_mb_8_subjects": max(
            (
                j["max_rss_mb"]
                for j in jobs
                if j["rule"] != "pretrain" or j.get("n_subjects", 0) >= 8
            ),
            default=0,
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--voxels", type=int, default=15000)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument(
        "--models", nargs="+", default=["ridge", "ridgedecoder", "mlpdecoder"],
        choices=sorted(MODEL_FEATURES),
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--subjects", type=int, default=2,
        help="NSD-sized subjects the shared backbone's pretraining reads (subject 01 held out)",
    )  # fmt: skip
    parser.add_argument(
        "--all-held-out", action="store_true",
        help="pretrain for every held-out subject, as the pretrain job does (default: for "
        "subject 01 only; the job's wall time is then n_subjects x that)",
    )  # fmt: skip
    parser.add_argument(
        "--pretrain-only", action="store_true",
        help="cross-subject models: measure the pretrain job alone (the job whose memory "
        "grew with --subjects), not the held-out subject's train and evaluate",
    )  # fmt: skip
    parser.add_argument(
        "--tokens", type=int, default=64,
        help="attention: tokens per image of the spatial store (DINOv2 ViT-B/14: 257)",
    )  # fmt: skip
    parser.add_argument(
        "--channels", type=int, default=32,
        help="attention: channels per token (DINOv2 ViT-B/14: 768)",
    )  # fmt: skip
    parser.add_argument(
        "--max-steps", type=int, default=None,
        help="the torch models' max_steps (default: the config's); peak memory does not "
        "depend on it (one minibatch at a time), the wall time does",
    )  # fmt: skip
    parser.add_argument(
        "--merge", action="store_true",
        help="keep the other jobs of an earlier result file of the same subject (one model "
        "per invocation, so each run fits a short hold of a shared machine)",
    )  # fmt: skip
    parser.add_argument(
        "--drop", action="append", default=[],
        metavar="RULE:MODEL:FEATURES[:N_SUBJECTS[:MAX_STEPS]]",
        help="with --merge: leave this earlier job out (measured with code since replaced)",
    )  # fmt: skip
    parser.add_argument(
        "--relabel-only", action="store_true",
        help="run no job: merge (--merge, --drop) and relabel the earlier result file",
    )  # fmt: skip
    parser.add_argument("--limit-mb", type=float, default=6000, help="kill a job above this RSS")
    parser.add_argument("--limit-s", type=float, default=1800, help="kill a job after this time")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (kept)")
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args(argv)
    full = a.sessions == 40 and a.voxels >= 15000
    out = a.out or ROOT / "benchmarks" / "results" / ("scale.json" if full else "scale_small.json")
    work = a.work or Path(tempfile.mkdtemp(prefix="brainpipe-scale-"))
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    base_config = json.loads(json.dumps(config))  # before any --max-steps
    if a.relabel_only:
        a.models, a.merge = [], True
    t_start = time.perf_counter()
    jobs: list[dict] = []
    notes: dict[str, dict] = {}

    def measure(rule: str, args: dict, mem_mb: int, threads: int = 1, **labels) -> dict:
        res = run_job({**args, "stage": rule}, threads, a.limit_mb, a.limit_s)
        jobs.append({"rule": rule, **labels, "mem_mb": int(mem_mb), **res})
        print(json.dumps(jobs[-1]), flush=True)
        return res

    try:
        if a.relabel_only:
            subject = json.loads(out.read_text())["subject"]
        elif a.work is not None and (work / "subject.json").exists():
            subject = json.loads((work / "subject.json").read_text())  # a kept scratch folder
        else:
            subject = make_subject(work, a.sessions, a.voxels, a.test_images, a.seed)
            (work / "subject.json").write_text(json.dumps(subject))
        print(json.dumps(subject), flush=True)
        from brainpipe.models import get_model, model_params
        from brainpipe.models.data import roi_size

        label = spatial_label(a.tokens, a.channels)
        needed = sorted({f for m in a.models for f in MODEL_FEATURES[m]})
        for name in needed:
            if name == SPATIAL:
                t0 = time.perf_counter()
                write_token_store(work, label, a.tokens, a.channels)
                print(f"token store: {time.perf_counter() - t0:.1f} s", flush=True)
                measure("spatial_features", {"work": str(work), "label": label},
                        declared_mem_mb("spatial_features"), features=label)  # fmt: skip
                notes[f"attention {label}"] = {
                    "tokens": a.tokens, "channels": a.channels,
                    "spatial_store_gb": round(subject["n_images"] * a.tokens * a.channels
                                              * 4 / 1e9, 2),
                    "per_trial_train_features_gb": round(
                        subject["n_trials"] * (1 - subject["n_test_images"]
                                               / subject["n_images"])
                        * a.tokens * a.channels * 4 / 1e9, 1),
                }  # fmt: skip
            else:
                measure("features", {"work": str(work), "name": name}, features_mem_mb(),
                        features=name)  # fmt: skip
        betas = str(work / "betas.zarr")
        size = roi_size(betas, ROI) if a.models else None
        metrics_paths, scores_paths = [], []
        for model in a.models:
            spec = get_model(model)
            stores = [label if f == SPATIAL else f for f in MODEL_FEATURES[model]]
            features = stores[0] if len(stores) == 1 else "+".join(stores)
            paths = [
                str(work / "spatial" / f"{f}.zarr") if f == label else str(work / f"{f}.zarr")
                for f in stores
            ]
            if a.max_steps and spec.torch:
                config["model_params"].setdefault(model, {})["max_steps"] = a.max_steps
            params = model_params(model, config)
            d = work / "models" / f"{model}-{features}"
            d.mkdir(parents=True, exist_ok=True)
            common = {"model": model, "subject": SUBJECT, "roi": ROI, "config": config,
                      "betas": betas, "predictions": str(d / "predictions.zarr")}  # fmt: skip
            pretrained = None
            if spec.cross_subject:
                # the pretrain job reads every subject's betas (leave-one-subject-out)
                # (a pretraining with fewer steps is kept apart: its wall time is no projection)
                steps = {"max_steps": a.max_steps} if a.max_steps else {}
                subjects = [SUBJECT] + [f"{k:02d}" for k in range(2, a.subjects + 1)]
                betas_paths = {SUBJECT: betas}
                for s in subjects[1:]:
                    betas_paths[s] = str(make_other_subject(work, s, a.seed))
                held_out = subjects if a.all_held_out else [SUBJECT]
                out_paths = {s: str(d / f"pretrained-without-{s}.safetensors") for s in held_out}
                pre = measure(
                    "pretrain",
                    {"model": model, "roi": ROI, "betas_paths": betas_paths, "features": paths,
                     "splits": str(work / "splits.tsv"), "out_paths": out_paths,
                     "config": config},
                    spec.pretrain_mem_mb(params, [size] * len(subjects)),
                    params["threads"],
                    model=model,
                    features=features,
                    n_subjects=len(subjects),
                    held_out=held_out,
                    **steps,
                )  # fmt: skip
                if a.pretrain_only or any(k.startswith("killed") for k in pre):
                    continue
                pretrained = out_paths[SUBJECT]
            train = measure(
                "train",
                {**common, "features": paths, "splits": str(work / "splits.tsv"),
                 "weights": str(d / "weights.safetensors"), "pretrained": pretrained},
                spec.job_mem_mb(params, [size]),
                params["threads"],
                model=model,
                features=features,
                # a fit with fewer steps is kept apart: its wall time is no projection
                **({"max_steps": a.max_steps} if a.max_steps and spec.torch else {}),
            )  # fmt: skip
            if any(k.startswith("killed") for k in train):
                continue  # no predictions to evaluate
            from safetensors import safe_open

            with safe_open(str(d / "weights.safetensors"), "np") as f:
                info = f.metadata()
            jobs[-1]["fit"] = {
                k: info[k]
                for k in ("fit_seconds", "epochs_run", "features_read", "n_train_trials")
                if k in info
            }
            if "epochs_run" in info and "batch_size" in params:
                n_train, bs = int(info["n_train_trials"]), int(params["batch_size"])
                jobs[-1]["fit"]["steps"] = int(info["epochs_run"]) * -(-n_train // bs)
            measure(
                "evaluate",
                {**common, "metrics": str(d / "metrics.json"), "scores": str(d / "scores.zarr"),
                 "embedding": paths[0] if spec.kind == "decoding" else None,
                 "labels": {"dataset": "scale", "subject": SUBJECT, "model": model,
                            "features": features},
                 **{k: config["evaluate"][k] for k in ("n_boot", "n_way", "draws")}},
                declared_mem_mb("evaluate"),
                model=model,
                features=features,
            )  # fmt: skip
            metrics = json.loads((d / "metrics.json").read_text())
            jobs[-1]["metrics"] = {
                k: metrics[k] for k in ("mean_r", "top1", "top1_chance") if k in metrics
            }
            metrics_paths.append(str(d / "metrics.json"))
            scores_paths.append(str(d / "scores.zarr"))
        if metrics_paths:
            summary = str(work / "summary.tsv")
            measure("summary", {"metrics": metrics_paths, "summary": summary},
                    declared_mem_mb("summary"))  # fmt: skip
            measure(
                "report",
                {"summary": summary, "scores": scores_paths, "betas": betas, "subject": SUBJECT,
                 "report": str(work / "report.html"), "figures": str(work / "report_figures")},
                declared_mem_mb("report"),
            )  # fmt: skip
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    command = "benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for job in jobs:
        job["rss_over_mem"] = round(job["max_rss_mb"] / job["mem_mb"], 3)
        job["command"] = command
    commands = [command]
    if a.merge and out.exists():
        earlier = json.loads(out.read_text())
        if (
            earlier.get("subject", {}).get("n_voxels") == subject["n_voxels"]
            and earlier.get("subject", {}).get("n_trials") == subject["n_trials"]
        ):
            new_keys = {_job_key(j) for j in jobs} | {_drop_key(d) for d in a.drop}
            kept = [j for j in earlier["jobs"] if _job_key(j) not in new_keys]
            for j in kept:
                j.setdefault("command", earlier.get("command", ""))
            jobs = kept + jobs
            commands = list(dict.fromkeys([j["command"] for j in jobs]))
            notes = {**earlier.get("notes", {}), **notes}
    for job in jobs:
        label_steps(job, subject, base_config)
    result = summarise(jobs, subject, notes, commands)
    result["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    result["cpu_count"] = os.cpu_count()
    result["load_avg_at_end"] = os.getloadavg()
    if a.relabel_only:  # the figures of the last run that measured something
        for key in ("total_wall_s", "load_avg_at_end"):
            result[key] = earlier.get(key, result[key])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "jobs"}, indent=2))
    return 0 if result["all_within_mem_mb"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
