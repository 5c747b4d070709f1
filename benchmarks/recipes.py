"""What each paper recipe takes at its real dataset's scale: jobs, storage, CPU and GPU time.

For every recipe in ``config/recipes/`` this derives, from measurements and the code that
runs the jobs (never hand estimates):

* **Jobs**: Snakemake's own DAG of the recipe at full size, ``snakemake -n`` with
  ``--configfile config/config.yaml config/recipes/NAME.yaml`` (the real dataset's
  subjects and sessions, as the recipe lists them). A dry run needs no data: the datasets'
  fetch rules declare the raw files. It does need the network weights the ``features``
  rule checks while the DAG is built, so the dry run points ``features.weights_dir`` at a
  scratch folder holding empty files at the paths
  :func:`brainpipe.features.weights.required_files` names (nothing reads them in a dry run).
  Counted per rule: **measured** (the DAG).
* **Storage**: every store the recipe writes, from its shape at the real dataset's size
  (published sizes, cited in :data:`DATASETS`) times the dtype the writing code uses
  (betas float32, or int16 for NSD's volume betas; features float32; spatial tokens
  float32; epochs float32): **computed** (uncompressed; Zarr's compression is not counted).
* **Time**: each rule's job time at the real size, from a per-job wall time **measured**
  by an existing benchmark (``benchmarks/results/*.json``, named per row) or by a small
  measurement in this run (a network's forward pass per image, one optimizer step of a
  torch model at the real input shape), **scaled** by the recipe's sizes with the stated
  assumption of each row. CPU figures are seconds on this machine's 2 cores.
* **GPU hours**: there is no GPU here, so none is measured. For the rules that run on a
  GPU when one is declared (network features, the torch models) the floating-point
  operations of the measured step are counted by :class:`torch.utils.flop_counter.FlopCounterMode`
  and divided by :data:`GPU_SUSTAINED_FLOPS` (an assumed sustained rate, stated in the
  results); everything else is CPU time.

Run (light: 5 dry runs of a few seconds, a few forward passes and optimizer steps)::

    .venv/bin/python benchmarks/recipes.py

Results: ``benchmarks/results/recipes.json``, and the table in ``docs/recipes.md``
between the ``recipes-table`` markers is regenerated from it (``--no-docs`` leaves it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dag import job_counts  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "recipes.json"
DOC = ROOT / "docs" / "recipes.md"
RECIPES = [
    "nsd-algonauts2023",
    "nsd-mindeye2",
    "things-eeg2-nice",
    "bold5000-visiolinguistic",
    "nsd-transformer-readout",
]
THREADS = 2
#: Assumed sustained throughput of one data-centre GPU on these small models and ViT
#: inference (float32/TF32): 20 TFLOP/s, about a quarter of an A100's dense TF32 peak.
#: Not measured (no GPU here); GPU hours scale inversely with it.
GPU_SUSTAINED_FLOPS = 20e12
#: Assumed floor of one optimizer step of a small model on a GPU (kernel launches,
#: Python): 5 ms, whatever its FLOPs. GPU time of a training row is the larger of the two.
GPU_MIN_STEP_S = 0.005

#: Published sizes of the real datasets, each with its source.
DATASETS: dict[str, dict[str, Any]] = {
    "nsd": {
        "trials_per_session": 750,
        "source_trials": "Allen et al. 2022 (Nat. Neurosci.): 750 trials per session "
        "(brainpipe.datasets.nsd_layout.TRIALS_PER_SESSION)",
        "images_upper_bound": 73000,
        "source_images": "NSD's 73,000 images (nsd_stimuli.hdf5); the stimuli a recipe's "
        "trials show are at most these (~70,566 were shown at all)",
        "test_images": 1000,
        "volume_shape": (81, 104, 83),
        "source_volume": "func1pt8mm grid (config/datasets/nsd.yaml)",
        "nsdgeneral_voxels": 15000,
        "source_nsdgeneral": "~15,000 nsdgeneral voxels at 1.8 mm per subject (as in "
        "benchmarks/scale.py)",
        "fsaverage_vertices": 2 * 163842,
        "source_fsaverage": "fsaverage: 163,842 vertices per hemisphere, both kept in "
        "betas.zarr (brainpipe.datasets.nsd_surface)",
        "challenge_vertices": 39548,
        "source_challenge": "Algonauts 2023 challenge data, subj01: 19,004 LH + 20,544 RH "
        "nsdgeneral(+RSC) fsaverage vertices; used for every subject",
        "session_object_gb": 1.102,
        "source_session_object": "one func1pt8mm betas_sessionNN.hdf5 (int16), "
        "benchmarks/results/ingest.json object_bytes",
    },
    "things-eeg2": {
        "train_images": 16540,
        "test_images": 200,
        "train_repetitions": 4,
        "test_repetitions": 80,
        "channels": 63,
        "raw_sfreq": 1000,
        "source": "Gifford et al. 2022 (NeuroImage), config/datasets/things-eeg2.yaml",
    },
    "bold5000": {
        "trials_per_run": 37,
        "runs_per_session": 10,
        "volumes_per_run": 194,
        "images": 4916,
        "voxel_mm": 2.0,
        "brain_voxels": 150000,
        "roi_voxels": 2000,
        "source": "Chang et al. 2019 (Sci. Data): 37 images and 194 volumes (TR 2 s) per run, "
        "10 runs per session, 4,916 distinct images, 2 mm voxels. brain_voxels (a ~1.2 L "
        "brain at 2 mm) and roi_voxels (EarlyVis + PPA, both hemispheres) are assumptions, "
        "not read from the data",
    },
}


# --------------------------------------------------------------------------- the DAG


def placeholder_weights(config: dict, folder: Path) -> None:
    """Empty files where the configured networks' weights would be (a dry run reads none)."""
    from brainpipe.features.weights import network_settings, required_files

    for settings in network_settings(config["features"]).values():
        for wf in required_files(settings, folder):
            wf.path.parent.mkdir(parents=True, exist_ok=True)
            wf.path.touch()


def merged_config(name: str) -> dict:
    """The recipe's config as Snakemake merges it (nested blocks updated key by key)."""

    def update(base: dict, new: dict) -> dict:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                update(base[key], value)
            else:
                base[key] = value
        return base

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return update(
        config, yaml.safe_load((ROOT / "config" / "recipes" / f"{name}.yaml").read_text())
    )


def model_jobs(output: str) -> dict[str, int]:
    """Training jobs per model in a dry run's job list (from each job's log name)."""
    counts: dict[str, int] = {}
    rule = None
    for line in output.splitlines():
        if line.startswith("rule "):
            rule = line[5:].rstrip(":")
        elif rule in ("train", "meeg_train") and line.strip().startswith("log:"):
            match = re.search(r"_([A-Za-z0-9]+)-[^_/]+\.log$", line.strip())
            if match:
                counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def dag_jobs(name: str, work: Path) -> tuple[dict[str, int], dict[str, int], float]:
    """Jobs per rule and training jobs per model of the recipe's full-size DAG
    (``snakemake -n``), and the dry run's wall time."""
    work.mkdir(parents=True, exist_ok=True)
    weights = work / "weights"
    placeholder_weights(
        merged_config(name)
        | {"features": {**merged_config(name)["features"], "weights_dir": str(weights)}},
        weights,
    )
    override = work / "weights_dir.yaml"
    override.write_text(yaml.safe_dump({"features": {"weights_dir": str(weights)}}))
    cmd = [
        sys.executable, "-m", "snakemake", "-n",
        "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
        "--configfile", str(ROOT / "config" / "config.yaml"),
        str(ROOT / "config" / "recipes" / f"{name}.yaml"), str(override),
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name}: dry run failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return job_counts(proc.stdout), model_jobs(proc.stdout), wall


# --------------------------------------------------------------------------- measurements


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def _timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def net_key(cfg: dict) -> str:
    """``network:layer,layer`` of a configured network (what one features job runs)."""
    return f"{cfg['network']}:{','.join(cfg['layers'])}"


def measure_network(network: str, layers: list[str], batch: int = 8) -> dict[str, Any]:
    """Seconds and FLOPs per stimulus of one forward pass (random weights: same cost)."""
    import torch
    from PIL import Image

    from brainpipe.features.networks import get_network

    torch.manual_seed(0)
    if network == "dinov2":
        # facebook/dinov2-base's architecture without its config file (not shipped):
        # transformers' Dinov2Config defaults are ViT-B/14 (768 wide, 12 layers); the
        # processor's 224 px crop makes 256 patches + CLS = 257 tokens.
        import transformers

        model = transformers.Dinov2Model(transformers.Dinov2Config()).eval()
        pixels = torch.randn(batch, 3, 224, 224)

        def run():
            with torch.no_grad():
                return model(pixel_values=pixels, output_hidden_states=True).hidden_states

        out = {"hidden12": run()[12]}
        readout = "cls"
        note = "transformers Dinov2Config() (ViT-B/14), 224 px: the architecture of dinov2-base"
    else:
        net = get_network(network)
        loaded = net.builder(False, None, 0)
        if net.modality == "text":
            items = [f"a photo of {i} dogs next to a red car on a street" for i in range(batch)]
        else:
            rng = np.random.default_rng(0)
            items = [
                Image.fromarray(rng.integers(0, 255, (425, 425, 3), dtype=np.uint8))
                for _ in range(batch)
            ]

        def run():
            with torch.no_grad():
                x = loaded.collate([loaded.preprocess(i) for i in items])
                return loaded.forward(x, layers, "cpu")

        out = run()
        readout = net.default_readout
        note = f"brainpipe's {network} builder, random weights, {net.modality} input"
    seconds = _timed(run, repeats=2) / batch
    flops = _flops(run) / batch
    from brainpipe.features.networks import layer_views

    flat = {k: int(layer_views(v, readout)[0].shape[1]) for k, v in out.items()}
    tokens = {
        k: list(t.shape[1:])
        for k, v in out.items()
        if (t := layer_views(v, readout)[1]) is not None
    }
    return {
        "s_per_stimulus": seconds,
        "flops_per_stimulus": flops,
        "flat_features": flat,
        "token_shapes": tokens,
        "note": note,
    }


def measure_step(kind: str, shape: dict[str, int], params: dict[str, Any]) -> dict[str, Any]:
    """Seconds and FLOPs of one optimizer step (forward, backward, update) at a real shape."""
    import torch

    from brainpipe.models import torch_utils

    torch.manual_seed(0)
    bs = int(params["batch_size"])
    if kind == "attention":
        from brainpipe.models.encoders import _attention_module

        model = _attention_module(shape["tokens"], shape["channels"], shape["voxels"], params)
        x, y = torch.randn(bs, shape["tokens"], shape["channels"]), torch.randn(bs, shape["voxels"])

        def loss():
            return torch.mean((model(x) - y) ** 2)
    elif kind == "nice":
        from brainpipe.meeg.decoding import _nice_module

        model = _nice_module(shape["channels"], shape["times"], shape["dim"], params)
        x, y = torch.randn(bs, shape["channels"], shape["times"]), torch.randn(bs, shape["dim"])

        def loss():
            return torch_utils.clip_loss(model(x), y, float(params["temperature"]))
    elif kind == "mlp":
        from torch import nn

        from brainpipe.models.decoders import _backbone, _loss

        hidden = int(params["hidden"])
        model = nn.Sequential(
            nn.Linear(shape["voxels"], hidden),
            _backbone(hidden, shape["dim"], float(params["dropout"])),
        )
        x, y = torch.randn(bs, shape["voxels"]), torch.randn(bs, shape["dim"])

        def loss():
            return _loss(model(x), y, params)
    else:
        raise ValueError(kind)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()

    seconds = _timed(step, repeats=3)
    return {"s_per_step": seconds, "flops_per_step": _flops(step), "batch_size": bs, "shape": shape}


def load_result(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


# --------------------------------------------------------------------------- cost model


def row(
    rule: str,
    jobs: int,
    seconds_per_job: float,
    basis: str,
    *,
    gpu_flops: float = 0.0,
    gpu_steps: int = 0,
    measured: str = "scaled",
) -> dict[str, Any]:
    """One rule's cost: CPU seconds per job and in all; GPU hours where it can run on one
    (FLOPs over :data:`GPU_SUSTAINED_FLOPS`, at least ``gpu_steps`` x :data:`GPU_MIN_STEP_S`)."""
    gpu_s = max(gpu_flops / GPU_SUSTAINED_FLOPS, gpu_steps * GPU_MIN_STEP_S)
    return {
        "rule": rule,
        "jobs": jobs,
        "cpu_s_per_job": round(seconds_per_job, 1),
        "cpu_hours": round(jobs * seconds_per_job / 3600, 2),
        "gpu_hours": round(jobs * gpu_s / 3600, 3) if gpu_flops else None,
        "figure": measured,
        "basis": basis,
    }


def store(name: str, shape: tuple[int, ...], dtype: str, count: int = 1, note: str = "") -> dict:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize * count
    return {
        "store": name,
        "shape": list(shape),
        "dtype": dtype,
        "count": count,
        "gb": round(nbytes / 1e9, 2),
        "note": note,
    }


class Refs:
    """The benchmarks' measured per-job figures this model scales."""

    def __init__(self) -> None:
        scale = load_result("scale.json")
        self.scale_cmd = scale["command"]
        jobs = {(j["rule"], j.get("model")): j for j in scale["jobs"]}
        sub = scale["subject"]
        self.scale_trials, self.scale_voxels = sub["n_trials"], sub["n_voxels"]
        self.ridge_train = jobs["train", "ridge"]["seconds"]
        self.ridge_eval = jobs["evaluate", "ridge"]["seconds"]
        self.ridge_features = 64  # scale.py's encoding store: 64 PCA components
        self.summary = jobs["summary", None]["seconds"]
        self.report = jobs["report", None]["seconds"]
        self.eval_decoder = jobs["evaluate", "mlpdecoder"]["seconds"]
        # the spatial_features job of the largest token map scale.py built (its shape in
        # the notes: `--tokens 257 --channels 768`, a DINOv2 ViT-B/14 layer)
        spatial = [
            (j, scale["notes"][f"attention {j['features']}"])
            for j in scale["jobs"]
            if j["rule"] == "spatial_features" and f"attention {j['features']}" in scale["notes"]
        ]
        self.spatial, shape = max(spatial, key=lambda js: js[1]["tokens"] * js[1]["channels"])
        self.spatial_shape = (sub["n_images"], shape["tokens"], shape["channels"])
        # scale.py trains mlpdecoder with the default config's block (batch 256, epochs
        # capped at max_steps) on the subject's training trials: whole-job s per step
        mlp = get_params(
            "mlpdecoder", yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
        )
        n_train = sub["n_trials"] - 3 * sub["n_test_images"]
        bs = int(mlp["batch_size"])
        self.mlp_steps = capped_epochs([n_train], mlp, int(mlp["epochs"])) * math.ceil(n_train / bs)
        self.mlp_s_per_step = jobs["train", "mlpdecoder"]["seconds"] / self.mlp_steps
        # sharedbackbone's pretrain job as scale.py ran it whole (every step of its schedule)
        pre = jobs["pretrain", "sharedbackbone"]
        self.pretrain_s_per_step = pre["seconds"] / int(pre["steps"])
        self.pretrain_steps, self.pretrain_subjects = int(pre["steps"]), int(pre["n_subjects"])
        # the attention readout's whole train job on the largest token map scale.py trained
        # it on (its fit seconds over the steps it ran) and its evaluate job on that map
        attention = [
            (j, scale["notes"][f"attention {j['features']}"])
            for j in scale["jobs"]
            if j.get("model") == "attention" and f"attention {j['features']}" in scale["notes"]
        ]
        train, shape = max(
            ((j, n) for j, n in attention if j["rule"] == "train"),
            key=lambda js: js[1]["tokens"] * js[1]["channels"],
        )
        self.attention_shape = {
            "tokens": shape["tokens"], "channels": shape["channels"], "voxels": self.scale_voxels
        }  # fmt: skip
        self.attention_s_per_step = float(train["fit"]["fit_seconds"]) / int(train["fit"]["steps"])
        self.attention_steps = int(train["fit"]["steps"])
        self.attention_eval = next(
            j["seconds"] for j, _ in attention
            if j["rule"] == "evaluate" and j["features"] == train["features"]
        )  # fmt: skip
        feats = load_result("features.json")
        self.pca_gb = feats["pca"]["gigabytes"]
        self.pca_s = feats["pca"]["fit_s"] + feats["pca"]["transform_s"]
        self.extract_images_per_s = feats["extract"]["batched_images_per_s"]
        ingest = load_result("ingest.json")
        self.ingest_s = ingest["brainpipe"]["wall_s"]
        self.ingest_gb = ingest["object_bytes"] / 1e9
        meeg = load_result("meeg.json")
        self.meeg_s = meeg["full"]["ours"]["wall_s"]
        self.meeg_sessions = meeg["full"]["data"]["sessions"]
        self.meeg_samples = meeg["full"]["data"]["raw_samples"]  # all its sessions
        self.meeg_peak_mb = meeg["full"]["ours"]["peak_tree_rss_mb"]
        betas = load_result("betas.json")
        self.betas_voxel_scans = (
            betas["data"]["n_voxels"] * betas["data"]["n_runs"] * betas["data"]["n_scans"]
        )
        self.betas_s = betas["brainpipe_glmsingle_AD"]["wall_s"]


def ridge_job_s(refs: Refs, trials: int, voxels: int, features: int) -> float:
    """train + evaluate of a ridge job, scaled from scale.json ∝ trials × voxels × features."""
    factor = (trials * voxels * features) / (
        refs.scale_trials * refs.scale_voxels * refs.ridge_features
    )
    return (refs.ridge_train + refs.ridge_eval) * factor


RIDGE_BASIS = (
    "scale.json ridge train + evaluate ({t:.0f} s at 30,000 trials x 15,000 voxels x "
    "64 features) x trials x voxels x features"
)


def feature_rows(refs, nets: dict, config: dict, n_images: int, jobs: int) -> list[dict]:
    """One ``features`` row per configured network: forward passes + PCA at n_images."""
    rows = []
    labels = list(config["features"]["networks"])
    per_job = []
    flops = 0.0
    for label in labels:
        cfg = config["features"]["networks"][label]
        m = nets[net_key(cfg)]
        raw_dim = sum(m["flat_features"][layer] for layer in cfg["layers"])
        extract = n_images * m["job_s_per_stimulus"]
        pca = refs.pca_s * (n_images * raw_dim * 2 / 1e9) / refs.pca_gb
        per_job.append(extract + pca)
        flops += n_images * m["flops_per_stimulus"]
    hand = [m for m in config["feature_models"] if m not in labels]
    hand_note = f"; hand-made feature models ({', '.join(hand)}) not counted" if hand else ""
    basis = (
        f"{n_images:,} stimuli x features.json's whole-job ResNet-50 s/image "
        f"({1 / refs.extract_images_per_s:.2f}) x the network's forward time over "
        f"ResNet-50's (measured here, back to back) + PCA scaled from features.json "
        f"({refs.pca_s:.0f} s per {refs.pca_gb:.0f} GB float16) by the raw float16 bytes"
        + hand_note
    )
    rows.append(
        row("features", len(labels), float(np.mean(per_job)), basis, gpu_flops=flops / len(labels))
    )
    return rows


def feature_stores(config: dict, nets: dict, n_images: int) -> list[dict]:
    """Per network: PCA scores (float32), token layers (float16) and the float16 scratch."""
    stores = []
    n_comp = int(config["features"]["n_components"])
    for label, cfg in config["features"]["networks"].items():
        m = nets[net_key(cfg)]
        raw = sum(m["flat_features"][layer] for layer in cfg["layers"])
        stores.append(
            store(f"features/{label}.zarr", (n_images, n_comp), "float32", 1, "PCA scores")
        )
        for layer in cfg.get("tokens") or []:
            stores.append(
                store(
                    f"features/{label}.zarr tokens",
                    (n_images, *m["token_shapes"][layer]),
                    "float16",
                    1,
                    f"every token of {layer}",
                )
            )
        stores.append(
            store(
                f"features/{label} scratch (deleted after PCA)",
                (n_images, raw),
                "float16",
                1,
                "flat activations",
            )
        )
    return stores


def common_rows(refs: Refs, counts: dict) -> list[dict]:
    rows = []
    for rule, s, what in (("summary", refs.summary, "summary"), ("report", refs.report, "report")):
        for r in (rule, f"meeg_{rule}"):
            if counts.get(r):
                rows.append(
                    row(
                        r,
                        counts[r],
                        s,
                        f"scale.json {what} job as measured "
                        "(one NSD-sized subject; assumed the same here)",
                        measured="measured",
                    )
                )
    return rows


def nsd_costs(name: str, config: dict, counts: dict, refs: Refs, nets: dict, steps: dict) -> dict:
    ds = DATASETS["nsd"]
    n_sub = len(config["subjects"])
    n_ses = len(config["sessions"])
    trials = n_ses * ds["trials_per_session"]
    space = (config.get("source") or {}).get("space", "func1pt8mm")
    mask = (config.get("source") or {}).get("mask", "brainmask")
    if space == "fsaverage":
        stored, dtype = ds["fsaverage_vertices"], "float32"
        modelled = ds["challenge_vertices"]
        session_gb = ds["fsaverage_vertices"] * ds["trials_per_session"] * 4 / 1e9
    else:
        stored = ds["nsdgeneral_voxels"] if mask == "nsdgeneral" else None
        dtype = "int16"
        modelled = ds["nsdgeneral_voxels"]
        session_gb = ds["session_object_gb"]
    n_images = ds["images_upper_bound"]
    stores = []
    if stored:
        stores.append(
            store("betas.zarr", (trials, stored), dtype, n_sub, f"one per subject; {space}, {mask}")
        )
    rows = [
        row(
            "ingest_betas",
            counts["ingest_betas"],
            refs.ingest_s * n_ses * session_gb / refs.ingest_gb,
            f"ingest.json: {refs.ingest_s:.1f} s per {refs.ingest_gb:.2f} GB session object "
            f"(loopback, so download time is extra) x {n_ses} sessions x "
            f"{session_gb:.2f} GB per session ({space})",
        )
    ]
    n_comp = int(config["features"]["n_components"])
    stores += feature_stores(config, nets, n_images)
    rows += feature_rows(refs, nets, config, n_images, counts["features"])
    models = config["models"]
    n_rois = len(config["rois"])
    per_roi = modelled / n_rois if len(config["rois"]) > 1 else modelled
    if "ridge" in models:
        n = counts["per_model"]["ridge"]
        s = ridge_job_s(refs, trials, per_roi, n_comp)
        rows.append(
            row(
                "train + evaluate (ridge)",
                n,
                s,
                RIDGE_BASIS.format(t=refs.ridge_train + refs.ridge_eval)
                + f"; {per_roi:,.0f} voxels per job",
            )
        )
        stores.append(store("models (ridge weights)", (n_comp + 1, per_roi), "float32", n))
    if "spatial_features" in counts:
        tok = steps["attention"]["shape"]
        stores.append(
            store(
                "features/spatial/<label>.zarr",
                (n_images, tok["tokens"], tok["channels"]),
                "float32",
                1,
                "every token of the layer",
            )
        )
        sp, (sp_n, sp_t, sp_c) = refs.spatial, refs.spatial_shape
        rows.append(
            row(
                "spatial_features",
                counts["spatial_features"],
                sp["seconds"] * n_images * tok["tokens"] * tok["channels"] / (sp_n * sp_t * sp_c),
                f"scale.json spatial_features ({sp['seconds']:.0f} s for {sp_n:,} images x "
                f"{sp_t} tokens x {sp_c} channels: float16 tokens read, z-scored and written "
                f"float32 a chunk of stimuli at a time, peak {sp['max_rss_mb']:,.0f} MB of "
                f"{sp['mem_mb']:,}) x stimuli x tokens x channels (the forward pass is the "
                "features job's)",
            )
        )
    if "attention" in models:
        p = steps["attention"]
        n_train = trials - ds["test_images"] * 3
        att = {**get_params("attention", config)}
        epochs = capped_epochs([n_train], att, int(att["epochs"]))
        n_steps = epochs * math.ceil(n_train / p["batch_size"])
        n = counts["per_model"]["attention"]
        rows.append(
            row(
                "train (attention)",
                n,
                n_steps * p["job_s_per_step"],
                f"{step_basis(p, refs)} (batch {p['batch_size']}, "
                f"{tok['tokens']} tokens x {tok['channels']} channels -> "
                f"{p['shape']['voxels']:,.0f} voxels) x "
                f"{epochs} epochs x {math.ceil(n_train / p['batch_size'])} batches",
                gpu_flops=n_steps * p["flops_per_step"],
                gpu_steps=n_steps,
            )
        )
        rows.append(
            row(
                "evaluate (attention)",
                n,
                refs.attention_eval * per_roi / refs.scale_voxels,
                f"scale.json attention evaluate ({refs.attention_eval:.1f} s on "
                f"{refs.scale_voxels:,} voxels) x voxels",
            )
        )
    if "mlpdecoder" in models or "sharedbackbone" in models:
        p = steps["mlp"]
        mlp = get_params("mlpdecoder", config)
        n_train = trials - ds["test_images"] * 3
        ep = capped_epochs([n_train], mlp, int(mlp["epochs"]))
        n_steps = ep * math.ceil(n_train / p["batch_size"])
        basis = (
            f"{step_basis(p, refs)} (batch {p['batch_size']}, "
            f"{p['shape']['voxels']:,} voxels -> {p['shape']['dim']}) x steps "
            f"(epochs capped at max_steps as the models cap them)"
        )
        rows.append(
            row(
                "train (mlpdecoder)",
                counts["per_model"].get("mlpdecoder", 0),
                n_steps * p["job_s_per_step"],
                basis + f": {n_steps} steps",
                gpu_flops=n_steps * p["flops_per_step"],
                gpu_steps=n_steps,
            )
        )
        if "sharedbackbone" in models:
            sb = get_params("sharedbackbone", config)
            n_pre = [n_train] * (n_sub - 1)
            ep_pre = capped_epochs(n_pre, sb, int(sb["epochs"]))
            pre_steps = ep_pre * sum(math.ceil(n / p["batch_size"]) for n in n_pre)
            # one job per ROI trains every leave-one-subject-out backbone (rules/train.smk)
            rows.append(
                row(
                    "pretrain (sharedbackbone)",
                    counts.get("pretrain", 0),
                    n_sub * pre_steps * p["ratio_to_reference_step"] * refs.pretrain_s_per_step,
                    f"{p['ratio_to_reference_step'] * refs.pretrain_s_per_step:.3f} s per step = "
                    f"{p['ratio_to_reference_step']:.2f} (the recipe's MLP step over "
                    f"scale.json's, both measured here) x scale.json's whole pretrain job s/step "
                    f"({refs.pretrain_s_per_step:.3f}: {refs.pretrain_steps:,} steps, "
                    f"{refs.pretrain_subjects} subjects): {n_sub} backbones x {pre_steps} steps "
                    f"over {n_sub - 1} subjects each",
                    gpu_flops=n_sub * pre_steps * p["flops_per_step"],
                    gpu_steps=n_sub * pre_steps,
                )
            )
            one_ses = ds["trials_per_session"]  # finetune_sessions: ["01"]
            bs, k = p["batch_size"], int(sb["n_folds"])
            ft_epochs = int(sb["finetune_epochs"])
            # at most: n_folds CV curves on (k-1)/k of the session, the final fine-tuning,
            # and the from-scratch MLP baseline (sharedbackbone's own epochs, capped)
            cv = k * ft_epochs * math.ceil(one_ses * (k - 1) / k / bs)
            final = ft_epochs * math.ceil(one_ses / bs)
            base = capped_epochs([one_ses], sb, int(sb["epochs"])) * math.ceil(one_ses / bs)
            total = cv + final + base
            rows.append(
                row(
                    "train (sharedbackbone, 1 session)",
                    counts["per_model"].get("sharedbackbone", 0),
                    total * p["job_s_per_step"],
                    basis + f": at most {cv} CV + {final} "
                    f"fine-tuning + {base} from-scratch baseline steps on 1 session",
                    gpu_flops=total * p["flops_per_step"],
                    gpu_steps=total,
                )
            )
        n_eval = counts["evaluate"]
        rows.append(
            row(
                "evaluate (decoders)",
                n_eval,
                refs.eval_decoder,
                "scale.json decoder evaluate as measured (1,000 test images)",
                measured="measured",
            )
        )
    rows += common_rows(refs, counts)
    return {
        "rows": rows,
        "stores": stores,
        "sizes": {
            "subjects": n_sub,
            "sessions": n_ses,
            "trials_per_subject": trials,
            "voxels_stored": stored,
            "voxels_modelled": modelled,
            "stimuli": n_images,
            "space": space,
            "mask": mask,
        },
    }


def step_basis(p: dict, refs: Refs) -> str:
    if p.get("reference") == "attention":
        t = refs.attention_shape
        return (
            f"{p['job_s_per_step']:.3f} s per step = {p['ratio_to_reference_step']:.2f} "
            f"(this step over one of the readout at scale.json's shape and the default "
            f"config's parameters, {t['tokens']} tokens x {t['channels']} channels -> "
            f"{t['voxels']:,} voxels, both measured here) x scale.json's whole-job attention "
            f"s/step there ({refs.attention_s_per_step:.2f}, {refs.attention_steps} steps)"
        )
    return (
        f"{p['job_s_per_step']:.3f} s per step = {p['ratio_to_reference_step']:.2f} "
        f"(this step over scale.json's mlpdecoder step, both measured here) x scale.json's "
        f"whole-job mlpdecoder s/step ({refs.mlp_s_per_step:.3f})"
    )


def capped_epochs(n_rows: list[int], params: dict, epochs: int) -> int:
    """The epochs a torch model runs: ``epochs``, cut to ``max_steps`` optimizer steps
    where the model has that cap (the models' own function)."""
    if not params.get("max_steps"):
        return int(epochs)
    try:
        from brainpipe.models.torch_utils import capped_epochs as cap
    except ImportError:
        from brainpipe.models.decoders import _capped_epochs as cap
    return int(cap(n_rows, params, epochs))


def get_params(model: str, config: dict) -> dict:
    from brainpipe.models import model_params

    return model_params(model, config)


def eeg_costs(config: dict, counts: dict, refs: Refs, nets: dict, steps: dict) -> dict:
    ds = DATASETS["things-eeg2"]
    meeg = config["meeg"]
    n_sub, n_ses = len(config["subjects"]), len(config["sessions"])
    n_times = int(round((meeg["tmax"] - meeg["tmin"]) * meeg["sfreq"])) + 1
    trials = n_ses * (
        ds["train_images"] * ds["train_repetitions"] // 4
        + ds["test_images"] * ds["test_repetitions"] // 4
    )
    raw_samples_session = refs.meeg_samples / refs.meeg_sessions
    n_images = ds["train_images"] + ds["test_images"]
    stores = [
        store(
            "epochs.zarr",
            (trials, ds["channels"], n_times),
            "float32",
            n_sub,
            f"{trials:,} epochs per subject ({n_ses} sessions), {n_times} samples at "
            f"{meeg['sfreq']:.0f} Hz",
        ),
        store(
            "raw EEG (read)",
            (round(raw_samples_session * n_ses), ds["channels"] + 1),
            "float64",
            n_sub,
            "meeg.json's whole-subject run (raw_samples per session) x sessions, as "
            "read (float64); OSF's compressed files are smaller",
        ),
    ]
    rows = [
        row(
            "meeg_preprocess",
            counts["meeg_preprocess"],
            refs.meeg_s * n_ses / refs.meeg_sessions,
            f"meeg.json: {refs.meeg_s:.0f} s for a whole {refs.meeg_sessions}-session subject "
            f"(peak {refs.meeg_peak_mb:.0f} MB) x {n_ses}/{refs.meeg_sessions} sessions; the "
            f"benchmark resamples to 100 Hz, the recipe to {meeg['sfreq']:.0f} Hz "
            "(assumed: the raw read and filter dominate)",
        )
    ]
    stores += feature_stores(config, nets, n_images)
    rows += feature_rows(refs, nets, config, n_images, counts["features"])
    p = steps["nice"]
    nice = get_params("nice", config)
    n_train = ds["train_images"]  # average_train: one row per training image
    n_steps = int(nice["epochs"]) * math.ceil(n_train / p["batch_size"])
    rows.append(
        row(
            "meeg_train (nice)",
            counts["per_model"]["nice"],
            n_steps * p["job_s_per_step"],
            f"{step_basis(p, refs)} (batch {p['batch_size']}, "
            f"{ds['channels']} channels x {n_times} samples) x {nice['epochs']} epochs x "
            f"{math.ceil(n_train / p['batch_size'])} batches (averaged training "
            "images)",
            gpu_flops=n_steps * p["flops_per_step"],
            gpu_steps=n_steps,
        )
    )
    # time-resolved ridge: one ridge per time point, n_train x channels -> embedding
    s = (
        refs.ridge_train
        * (n_train * ds["channels"] * n_times)
        / (refs.scale_trials * refs.ridge_features)
        * (int(config["features"]["n_components"]) / refs.scale_voxels)
    )
    rows.append(
        row(
            "meeg_train (timedecoder)",
            counts["per_model"]["timedecoder"],
            s,
            "scale.json ridge train scaled x samples x channels x targets, once per "
            f"time point ({n_times})",
        )
    )
    rows.append(
        row(
            "meeg_evaluate",
            counts["meeg_evaluate"],
            refs.eval_decoder,
            "scale.json decoder evaluate as measured",
            measured="measured",
        )
    )
    rows += common_rows(refs, counts)
    return {
        "rows": rows,
        "stores": stores,
        "sizes": {
            "subjects": n_sub,
            "sessions": n_ses,
            "epochs_per_subject": trials,
            "samples_per_epoch": n_times,
            "stimuli": n_images,
        },
    }


def bold5000_costs(config: dict, counts: dict, refs: Refs, nets: dict) -> dict:
    ds = DATASETS["bold5000"]
    n_sub, n_ses = len(config["subjects"]), len(config["sessions"])
    runs = n_ses * ds["runs_per_session"]
    trials = runs * ds["trials_per_run"]
    scans = runs * ds["volumes_per_run"]
    vox = ds["brain_voxels"]
    stores = [
        store("preproc.zarr", (scans, vox), "float32", n_sub, "cleaned runs, brain voxels"),
        store("betas.zarr", (trials, vox), "float32", n_sub),
    ]
    stores += feature_stores(config, nets, ds["images"])
    betas_s = refs.betas_s * vox * scans / refs.betas_voxel_scans
    rows = [
        row(
            "preprocess",
            counts["preprocess"],
            betas_s * 0.25,
            "assumed a quarter of the betas job (no benchmark of preprocess at this size)",
            measured="assumed",
        ),
        row(
            "betas",
            counts["betas"],
            betas_s,
            f"betas.json GLMsingle-level betas: {refs.betas_s:.0f} s for 323,188 voxels x 12 runs "
            f"x 226 scans, x voxels x scans ({vox:,} x {scans:,})",
        ),
    ]
    rows += feature_rows(refs, nets, config, ds["images"], counts["features"])
    n_comp = int(config["features"]["n_components"])
    per_roi = ds["roi_voxels"] / len(config["rois"])
    s = ridge_job_s(refs, trials, per_roi, n_comp)
    rows.append(
        row(
            "train + evaluate (ridge, bandedridge)",
            counts["train"],
            s,
            RIDGE_BASIS.format(t=refs.ridge_train + refs.ridge_eval)
            + f"; {per_roi:,.0f} voxels per ROI job (banded: two bands counted as one)",
        )
    )
    jobs = load_result("align_jobs.json")
    size = jobs["size"]
    for rule in ("align", "align_scores", "align_encoding", "align_decoding"):
        measured = [j for j in jobs["jobs"] if j["rule"] == rule]
        if not counts.get(rule) or not measured:
            continue
        s = sum(j["seconds"] for j in measured) / len(measured)
        peak = max(j["max_rss_mb"] for j in measured)
        what = ", ".join(f"{j.get('method', rule)} {j['seconds']:.1f} s" for j in measured)
        rows.append(
            row(
                rule,
                counts[rule],
                s,
                f"align_jobs.json, the job at this recipe's size ({size['n_subjects']} "
                f"subjects x {size['n_trials']:,} trials x {size['n_voxels']:,} ROI voxels, "
                f"{size['fit_stimuli']:,} fit images; ROI voxels only in the stores): {what}, "
                f"peak {peak:,.0f} MB",
                measured="measured",
            )
        )
    rows += common_rows(refs, counts)
    return {
        "rows": rows,
        "stores": stores,
        "sizes": {
            "subjects": n_sub,
            "sessions": n_ses,
            "runs_per_subject": runs,
            "trials_per_subject": trials,
            "scans_per_subject": scans,
            "brain_voxels": vox,
            "stimuli": ds["images"],
        },
    }


# --------------------------------------------------------------------------- docs


def table(results: dict) -> str:
    lines = [
        "| recipe | command | jobs (DAG) | storage GB | CPU hours (2 cores) | GPU hours "
        "| largest cost |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, r in results["recipes"].items():
        big = max(r["rows"], key=lambda x: x["cpu_hours"])
        lines.append(
            f"| `{name}` | `snakemake --cores 8 --configfile config/recipes/{name}.yaml` | "
            f"{r['jobs']['total']} | {r['storage_gb']:,.0f} | {r['cpu_hours']:,.1f} | "
            f"{r['gpu_hours']:,.2f} | {big['rule']} ({big['cpu_hours']:,.1f} CPU h) |"
        )
    return "\n".join(lines)


def detail(results: dict) -> str:
    out = []
    for name, r in results["recipes"].items():
        per_rule = ", ".join(f"{k} {v}" for k, v in r["jobs"].items() if k != "total")
        out.append(
            f"\n**{name}** ({', '.join(f'{k} {v}' for k, v in r['sizes'].items())}); "
            f"jobs per rule: {per_rule}\n"
        )
        out.append("| rule | jobs | CPU s per job | CPU h | GPU h | figure | basis |")
        out.append("|---|---:|---:|---:|---:|---|---|")
        for x in r["rows"]:
            gpu = "" if x["gpu_hours"] is None else f"{x['gpu_hours']:.2f}"
            out.append(
                f"| {x['rule']} | {x['jobs']} | {x['cpu_s_per_job']:,.0f} | "
                f"{x['cpu_hours']:,.2f} | {gpu} | {x['figure']} | {x['basis']} |"
            )
        out.append("\n| store | shape | dtype | count | GB |")
        out.append("|---|---|---|---:|---:|")
        for s in r["stores"]:
            out.append(
                f"| {s['store']} | {' x '.join(f'{d:,}' for d in s['shape'])} | "
                f"{s['dtype']} | {s['count']} | {s['gb']:,.1f} |"
            )
    return "\n".join(out)


def write_docs(results: dict) -> None:
    begin, end = "<!-- recipes-table: begin -->", "<!-- recipes-table: end -->"
    text = DOC.read_text()
    body = (
        f"{begin}\n_Generated by `{results['command']}` from "
        "`benchmarks/results/recipes.json`; do not edit by hand._\n\n"
        + table(results)
        + "\n\nJobs: **measured** (Snakemake's DAG of the recipe at full size, `snakemake -n`). "
        "Storage: **computed** from each store's shape at the dataset's published size and the "
        "dtype its writer uses (uncompressed). CPU hours: per-job times **measured** by the "
        "benchmarks named per row and **scaled** to the recipe's sizes (the assumption is in "
        "each row's basis; `assumed` rows have no benchmark). GPU hours: **not measured** (no "
        "GPU here): the counted FLOPs of the measured steps / forward passes over an assumed "
        f"{results['gpu_sustained_tflops']:.0f} TFLOP/s sustained; rules without a GPU path "
        "count as CPU only; on a GPU the features jobs are bound by decoding images on the "
        "loader workers, which the GPU figure leaves out. Download time is not included "
        "(ingest was measured on loopback). The ratios measured here (a network's forward "
        "time, a torch step, each against a reference measured back to back) move with the "
        "shared machine's load: two runs gave the NICE step 8.3x and 18.6x the reference "
        "step, so read the time columns as within about 2x.\n" + detail(results) + f"\n{end}"
    )
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + body + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n## What a recipe takes at full scale\n\n" + body + "\n"
    DOC.write_text(text)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=RECIPES)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument(
        "--docs-only", action="store_true", help="rewrite the docs table from recipes.json"
    )
    parser.add_argument(
        "--reuse-measurements",
        action="store_true",
        help="take the networks' and steps' measurements from recipes.json (re-derive the rest)",
    )
    args = parser.parse_args()
    if args.docs_only:
        write_docs(json.loads(OUT.read_text()))
        return

    import torch

    torch.set_num_threads(THREADS)
    refs = Refs()
    configs = {name: merged_config(name) for name in args.recipes}
    wanted = {net_key({"network": "resnet50", "layers": ["avgpool"]})}
    for config in configs.values():
        wanted |= {net_key(cfg) for cfg in config["features"]["networks"].values()}
    # Network features: features.json's whole-job seconds per ResNet-50 image, times each
    # network's forward time over ResNet-50's, both measured here, ResNet-50 just before
    # and after the network (so the machine's load cancels in the ratio). The counted
    # FLOPs ratio is kept beside it (on CPU, ViTs run more FLOP/s than ResNet-50).
    ref_key = net_key({"network": "resnet50", "layers": ["avgpool"]})
    old = json.loads(OUT.read_text()) if args.reuse_measurements else {}
    nets = dict(old.get("networks", {}))
    for key in sorted(wanted - {ref_key} - set(nets)):
        print(f"measuring {key} ...", flush=True)
        network, layers = key.split(":")
        before = measure_network("resnet50", ["avgpool"])
        m = measure_network(network, layers.split(","))
        after = measure_network("resnet50", ["avgpool"])
        ref_s = (before["s_per_stimulus"] + after["s_per_stimulus"]) / 2
        m["time_ratio_to_resnet50"] = m["s_per_stimulus"] / ref_s
        m["flops_ratio_to_resnet50"] = m["flops_per_stimulus"] / before["flops_per_stimulus"]
        m["job_s_per_stimulus"] = m["time_ratio_to_resnet50"] / refs.extract_images_per_s
        nets[key] = m
    # Torch steps: each measured between two steps of scale.json's mlpdecoder at its own
    # shape, and scaled by scale.json's whole-job seconds per step of that model (so the
    # load during this run cancels; the ratio to the mlp step is what is measured here).
    ref_mlp = get_params("mlpdecoder", merged_config("nsd-mindeye2"))
    ref_shape = {"voxels": refs.scale_voxels, "dim": 512}
    wanted_steps = {}
    if "nsd-transformer-readout" in configs:
        cfg = configs["nsd-transformer-readout"]
        vox = round(DATASETS["nsd"]["challenge_vertices"] / len(cfg["rois"]))
        wanted_steps["attention"] = (
            {"tokens": 257, "channels": 768, "voxels": vox},
            get_params("attention", cfg),
        )
    if "nsd-mindeye2" in configs:
        cfg = configs["nsd-mindeye2"]
        wanted_steps["mlp"] = (
            {
                "voxels": DATASETS["nsd"]["nsdgeneral_voxels"],
                "dim": int(cfg["features"]["n_components"]),
            },
            get_params("mlpdecoder", cfg),
        )
    if "things-eeg2-nice" in configs:
        cfg = configs["things-eeg2-nice"]
        m = cfg["meeg"]
        wanted_steps["nice"] = (
            {
                "channels": DATASETS["things-eeg2"]["channels"],
                "times": int(round((m["tmax"] - m["tmin"]) * m["sfreq"])) + 1,
                "dim": int(cfg["features"]["n_components"]),
            },
            get_params("nice", cfg),
        )
    # The attention readout is timed against itself at scale.json's shape: its per-voxel
    # queries make its step cost unlike the MLP's, so an MLP reference would not carry over.
    default_cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    references = {
        "attention": ("attention", refs.attention_shape, get_params("attention", default_cfg),
                      refs.attention_s_per_step),
    }  # fmt: skip
    steps = {}
    for k, v in old.get("steps", {}).items():  # reuse a step timed against today's reference
        v = {"reference": "mlpdecoder", **v}
        if "ratio_to_reference_mlp_step" in v:  # recipes.json before the attention reference
            v["ratio_to_reference_step"] = v.pop("ratio_to_reference_mlp_step")
        if k in wanted_steps and v["reference"] == references.get(k, ("mlpdecoder",))[0]:
            steps[k] = v
    for kind, (shape, params) in wanted_steps.items():
        if kind in steps:
            continue
        print(f"measuring a {kind} step ...", flush=True)
        ref_kind, ref_at, ref_params, ref_job_s = references.get(
            kind, ("mlp", ref_shape, ref_mlp, refs.mlp_s_per_step)
        )
        before = measure_step(ref_kind, ref_at, ref_params)["s_per_step"]
        step = measure_step(kind, shape, params)
        after = measure_step(ref_kind, ref_at, ref_params)["s_per_step"]
        step["reference"] = "attention" if ref_kind == "attention" else "mlpdecoder"
        step["ratio_to_reference_step"] = step["s_per_step"] / ((before + after) / 2)
        step["job_s_per_step"] = step["ratio_to_reference_step"] * ref_job_s
        steps[kind] = step

    recipes = {}
    with tempfile.TemporaryDirectory(prefix="brainpipe-recipes-") as tmp:
        for name, config in configs.items():
            print(f"dry run {name} ...", flush=True)
            counts, per_model, wall = dag_jobs(name, Path(tmp) / name)
            counts["per_model"] = per_model
            if config["dataset"] == "nsd":
                cost = nsd_costs(name, config, counts, refs, nets, steps)
            elif config["dataset"] == "things-eeg2":
                cost = eeg_costs(config, counts, refs, nets, steps)
            else:
                cost = bold5000_costs(config, counts, refs, nets)
            cost["train_jobs_per_model"] = counts.pop("per_model")
            cost["jobs"] = counts
            cost["dry_run_wall_s"] = round(wall, 1)
            kept = [s["gb"] for s in cost["stores"] if "scratch" not in s["store"]]
            cost["storage_gb"] = round(sum(kept), 1)
            cost["scratch_gb"] = round(sum(s["gb"] for s in cost["stores"]) - sum(kept), 1)
            cost["cpu_hours"] = round(sum(r["cpu_hours"] for r in cost["rows"]), 1)
            cost["gpu_hours"] = round(sum(r["gpu_hours"] or 0 for r in cost["rows"]), 2)
            recipes[name] = cost
    results = {
        "command": "python benchmarks/recipes.py " + " ".join(sys.argv[1:]),
        "gpu_sustained_tflops": GPU_SUSTAINED_FLOPS / 1e12,
        "threads": THREADS,
        "datasets": DATASETS,
        "networks": nets,
        "steps": steps,
        "recipes": recipes,
        "load_average_1_5_15": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    OUT.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(table(results))
    if not args.no_docs:
        write_docs(results)


if __name__ == "__main__":
    main()
