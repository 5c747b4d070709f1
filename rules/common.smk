# Config loading and validation, wildcard constraints, and the input functions
# that turn the config into target lists.

import os
from pathlib import Path

from brainpipe.config import validate_config

from snakemake.utils import validate

validate_config(config, source="config (config/config.yaml and --config overrides)")
# The schema's defaults, applied once: rules read config["betas"]["voxel_chunk"] etc.
# directly, and no default is repeated in a rule or the package.
validate(config, "../config/schemas/config.schema.yaml", set_default=True)

DATASET = config["dataset"]
DATA = f"{config['data_dir']}/{DATASET}"
RESULTS = f"{config['results_dir']}/{DATASET}"
LOGS = f"logs/{DATASET}"
# Every rule's `benchmark:` (wall time, max RSS) goes here; brainpipe.jobstats compares
# max RSS with the job's declared mem_mb.
BENCH = f"benchmarks/{DATASET}"
ENV = "../envs/brainpipe.yaml"

# The dataset's registry entry: this workflow's config/datasets/NAME.yaml (read locally, no
# network), wherever the brainpipe package is installed from.
from brainpipe.datasets.registry import load_entry

REGISTRY = str(Path(workflow.basedir) / "config" / "datasets")
DATASET_ENTRY = load_entry(DATASET, REGISTRY)
# What the dataset's kind does in the config's betas mode (brainpipe.datasets.adapters):
# fetch or generate, and for datasets that ship betas (NSD) ingest them; its checks of the
# config run here, at DAG build.
DATASET_ADAPTER = DATASET_ENTRY.adapter_for_config(config)
# True when the dataset ships betas: rules/ingest.smk makes betas.zarr and splits from them.
INGEST_BETAS = DATASET_ADAPTER.ingest_betas is not None
# True for M/EEG datasets: rules/meeg.smk replaces preprocess/betas/align/train/evaluate.
MEEG = DATASET_ENTRY.modality == "meeg"


wildcard_constraints:
    subject="[A-Za-z0-9]+",
    roi="[A-Za-z0-9]+",
    model="[a-z0-9]+",
    features="[a-z0-9]+",


def model_feature_labels(model):
    """The `{features}` values a model fans out over (banded ridge: the one label "bands")."""
    from brainpipe.models import get_model, model_params

    if get_model(model).inputs == "bands":
        return ["bands"]
    return model_params(model, config)["features"]


def model_dirs():
    """One directory per subject × ROI × model × feature model: the training fan-out.

    Each model's block in `model_params` may narrow `rois` and `features`.
    """
    from brainpipe.models import model_params

    dirs = []
    for model in config["models"]:
        dirs += expand(
            f"{RESULTS}/models/sub-{{subject}}/{{roi}}/{model}-{{features}}",
            subject=config["subjects"],
            roi=model_params(model, config)["rois"],
            features=model_feature_labels(model),
        )
    return dirs


def meeg_model_jobs():
    """(subject, model, feature model) of every M/EEG model job: the M/EEG fan-out."""
    from brainpipe.models import get_model, model_params

    jobs = []
    for model in config["models"]:
        if get_model(model).inputs != "epochs":
            raise ValueError(
                f"config models: {model!r} is not an M/EEG model (dataset {DATASET} is M/EEG; "
                "use timedecoder, nice)"
            )
        jobs += [
            (subject, model, features)
            for subject in config["subjects"]
            for features in model_params(model, config)["features"]
        ]
    return jobs


def meeg_model_dirs():
    """One folder per subject x M/EEG model x feature model (meeg_model_jobs' order)."""
    from brainpipe.meeg.jobs import SENSORS

    return [
        f"{RESULTS}/models/sub-{subject}/{SENSORS}/{model}-{features}"
        for subject, model, features in meeg_model_jobs()
    ]


def align_method_params(method):
    """The `align:` config block narrowed to what `method` uses (defaults in brainpipe.align)."""
    from brainpipe.align import method_params

    return method_params(method, config.get("align", {}))


def align_stores():
    """One store per configured alignment method: the align fan-out."""
    return expand(
        f"{RESULTS}/align/{{method}}.zarr", method=config.get("align", {}).get("methods", [])
    )


def _align_feature_models(key):
    """Feature models named in `align.<key>`, each checked against feature_models; none
    without an alignment method."""
    from brainpipe.errors import BrainpipeInputError

    labels = list(config.get("align", {}).get(key, []) or [])
    for label in labels:
        if label not in config["feature_models"]:
            raise BrainpipeInputError(
                "config",
                f"align.{key}",
                f"{label!r} is not in feature_models ({', '.join(config['feature_models'])})",
            )
    return labels if align_stores() else []


def align_roi_label():
    """`align.roi` as one label (a list joined with `+`): the ROI of aligned summary rows."""
    roi = config.get("align", {}).get("roi", "all")
    return "+".join(roi) if isinstance(roi, list) else str(roi)


def align_encoding_features():
    """Feature models of the encoding models fitted in each aligned space (align.encoding_features)."""
    return _align_feature_models("encoding_features")


def align_decoding_features():
    """Feature models decoded in each aligned space (align.decoding_features)."""
    return _align_feature_models("decoding_features")


def align_decoding_models():
    """The registry's decoders run in each aligned space (align.decoding_models, checked
    against the registry), each with its parameters (model_params.<name> applies)."""
    from brainpipe.align.decoding import check_decoding_models
    from brainpipe.models import model_params

    return {name: model_params(name, config) for name in check_decoding_models(config)}
# Shared response over time (rules/timeseries.smk): the `timeseries` block over its defaults.
from brainpipe.align.timeseries_jobs import (
    check_timeseries_config,
    timeseries_enabled,
    timeseries_params,
)

check_timeseries_config(config, source="config (config/config.yaml and --config overrides)")
TIMESERIES = timeseries_params(config)


def timeseries_metric_files():
    """One metrics file per time-series method x held-out subject: the fan-out."""
    if not timeseries_enabled(config):
        return []
    return expand(
        f"{RESULTS}/timeseries/{{method}}/sub-{{subject}}.json",
        method=TIMESERIES["methods"],
        subject=config["subjects"],
    )


def timeseries_targets():
    """The time-series stage's outputs, when the config asks for it."""
    if not timeseries_enabled(config):
        return []
    return [f"{RESULTS}/timeseries/matching.tsv", f"{RESULTS}/timeseries/matching.json"]


def timeseries_preproc_input(wildcards):
    """Source `preprocess`: the subject's preprocessed runs; the synthetic movie needs none."""
    if TIMESERIES["source"] == "preprocess":
        return f"{RESULTS}/sub-{wildcards.subject}/preproc.zarr"
    return []


# Generation from decoded latents (rules/generate.smk): the `generate` block over its defaults.
from brainpipe.generate.jobs import generate_params

GENERATE = generate_params(config)


def generate_metric_files():
    """One metrics file per subject x `generate.rois` entry: the generation fan-out."""
    return expand(
        f"{RESULTS}/generate/sub-{{subject}}/{{roi}}/metrics.json",
        subject=config["subjects"],
        roi=GENERATE["rois"],
    )


def generate_diffusion_inputs(name):
    """`generate/<name>` of the second stage when `generate.diffusion` is set, else none."""
    return [f"{RESULTS}/generate/{name}"] if GENERATE["diffusion"] else []


def generate_weight_manifests(*prefixes):
    """Input function: manifests of the verified weights a generation rule reads (labels by
    prefix). Evaluated while the DAG is built: a missing file stops the run, before any job,
    naming it and the command that fetches it (`snakemake weights`, whose DAG has no
    generation job, is not stopped; brainpipe.generate.weights)."""
    from brainpipe.generate.weights import check_present, requests

    labels = [
        label
        for label in requests(GENERATE, config.get("features"))
        if label.startswith(prefixes)
    ]

    def get(wildcards):
        if labels:
            check_present(GENERATE, config.get("features"))
        return [f"{config['results_dir']}/weights/{label}.json" for label in labels]

    return get


def generate_targets():
    """The generation stage's tables, when `generate.rois` / `generate.captions.rois` is set."""
    return ([f"{RESULTS}/generate/metrics.tsv"] if GENERATE["rois"] else []) + caption_targets()


# Brain captioning (rules/generate.smk): the `generate.captions` block over its defaults.
from brainpipe.generate.caption_jobs import caption_params, captions_enabled, check_caption_config

CAPTIONS = caption_params(config)
check_caption_config(config)


def caption_files():
    """One captions table per subject x `generate.captions.rois` entry: the fan-out."""
    return expand(
        f"{RESULTS}/generate/captions/sub-{{subject}}/{{roi}}/captions.tsv",
        subject=config["subjects"],
        roi=CAPTIONS["rois"],
    )


def caption_targets():
    """The captions' scores table, when `generate.captions.rois` is set."""
    return [f"{RESULTS}/generate/captions/scores.tsv"] if captions_enabled(config) else []


def caption_weights_input(wildcards):
    """The verified-weights manifest of `generate.captions.language_model` (a
    `features.networks` label), checked present while the DAG is built."""
    label = CAPTIONS["language_model"]
    if not label:
        return []
    from brainpipe.features.weights import check_weights_present

    check_weights_present(config.get("features"), [label])
    return [f"{config['results_dir']}/weights/{label}.json"]


# Input functions of the model-zoo rules (train.smk, evaluate.smk).


def _spec(model):
    from brainpipe.models import get_model

    return get_model(model)


def _params(model):
    from brainpipe.models import model_params

    return model_params(model, config)


def train_feature_inputs(wildcards):
    """Feature stores a training job reads (PCA store, spatial map, or every band)."""
    spec = _spec(wildcards.model)
    if spec.inputs == "bands":
        return [f"{RESULTS}/features/{f}.zarr" for f in _params(wildcards.model)["bands"]]
    if spec.inputs == "spatial":
        return [f"{RESULTS}/features/spatial/{wildcards.features}.zarr"]
    return [f"{RESULTS}/features/{wildcards.features}.zarr"]


def pretrained_input(wildcards):
    if not _spec(wildcards.model).cross_subject:
        return []
    folder = f"{RESULTS}/models/shared/{wildcards.roi}/{wildcards.model}-{wildcards.features}"
    return f"{folder}/pretrained-without-{wildcards.subject}.safetensors"


# Job resources (brainpipe.resources): every rule declares its own; the model-zoo rules read
# theirs from model_params.<model>. Memory grows with the attempt (retries after a job was
# killed for its memory get more); the profiles only add defaults for rules declaring none.
from brainpipe.resources import check_gpu_request, memory_for_attempt, per_attempt


def model_resource(key):
    """A model's `runtime` or `threads` (model_params.<model>.<key>) for its jobs."""
    return lambda wildcards: _params(wildcards.model)[key]


def model_mem_mb(wildcards, input, attempt):
    """A model job's memory on the first attempt, `attempt` times that on retries.

    model_params.<model>.mem_mb, or more for a model that holds its ROI's training betas
    (sized from the betas stores: brainpipe.models.registry.ModelSpec.job_mem_mb). Until
    the stores exist Snakemake leaves it to be evaluated (<TBD>), then evaluates it
    before the job runs.
    """
    return _betas_mem_mb(wildcards, input, attempt, pretrain=False)


def pretrain_mem_mb(wildcards, input, attempt):
    """The pretrain job's memory (every subject's store): ModelSpec.pretrain_mem_mb, which
    counts only the subjects the model's pretraining holds in memory at once."""
    return _betas_mem_mb(wildcards, input, attempt, pretrain=True)


def _betas_mem_mb(wildcards, input, attempt, pretrain):
    from brainpipe.models.data import roi_size

    spec, params = _spec(wildcards.model), _params(wildcards.model)
    betas = input.get("betas", []) if hasattr(input, "get") else []
    paths = [betas] if isinstance(betas, str) else list(betas)
    if spec.voxelwise or not paths:
        return memory_for_attempt(params["mem_mb"], attempt)
    sizes = [roi_size(p, wildcards.roi) for p in paths]
    need = spec.pretrain_mem_mb(params, sizes) if pretrain else spec.job_mem_mb(params, sizes)
    return memory_for_attempt(need, attempt)


def _submits_to_slurm():
    plugin = workflow.executor_plugin
    return plugin is not None and plugin.name == "slurm"


def model_gpu(wildcards):
    """model_params.<model>.gpu: the GPUs a model's jobs ask for (`--gpus` on SLURM)."""
    return _params(wildcards.model)["gpu"]


def check_gpu_requests():
    """Before anything is submitted to SLURM: every GPU request must find a GPU on the cluster.

    A request the profile has replaced (`set-resources`; the cluster profile's
    `gpu_fallback: cpu` sets `gpu: 0` for the GPU-capable rules) is not checked. Raises GpuUnavailableError naming the rule,
    the model and the keys to change.
    """
    if not _submits_to_slurm():
        return
    from brainpipe.resources import slurm_cluster_gpus

    for model in config["models"]:
        gpus = _params(model)["gpu"]
        if MEEG:
            rules_of_model = ["meeg_train"]
        elif _spec(model).cross_subject:
            rules_of_model = ["pretrain", "train"]
        else:
            rules_of_model = ["train"]
        for name in rules_of_model:
            overridden = workflow.resource_settings.overwrite_resources.get(name, {})
            if "gpu" not in overridden:
                check_gpu_request(name, model, gpus, slurm_cluster_gpus())
    features_cfg = config.get("features") or {}
    networks = sorted(features_cfg.get("networks") or {})
    overridden = workflow.resource_settings.overwrite_resources.get("features", {})
    if networks and "gpu" not in overridden:  # network feature jobs (rules/features.smk)
        gpus = int(features_cfg["gpu"])  # schema default 0
        check_gpu_request("features", networks[0], gpus, slurm_cluster_gpus(), "features.gpu")


def embedding_input(wildcards):
    """Decoders are scored against the embeddings of their feature store."""
    if _spec(wildcards.model).kind == "decoding":
        return f"{RESULTS}/features/{wildcards.features}.zarr"
    return []


# Raw inputs as files (brainpipe.dataset_index): a rule depends on the files it reads, so
# editing one raw file reruns exactly its dependants. The synthetic dataset is made by the
# `download` checkpoint; its files are listed once it exists. Fetched datasets (NSD,
# OpenNeuro, local BIDS) are one unit written atomically by `fetch`: rules depend on that
# folder, whose files do not exist while the DAG is first built.
FILE_INPUTS = DATASET_ADAPTER.file_inputs


def raw(kind):
    """Input function: the raw files of ``kind`` a job reads (``DATA`` for fetched datasets).

    kind: ``bold``, ``sidecar``, ``events`` (one per run of the job's subject),
    ``brain_mask``, ``masks`` (brain mask and ROI masks), ``stimuli_table``,
    ``stimulus_images``. Missing files are left out: `validate_inputs` names them.
    """
    from brainpipe import dataset_index as index

    def files(wildcards):
        if not FILE_INPUTS:
            return DATA
        checkpoints.download.get()
        subject = wildcards.get("subject")
        if kind in ("bold", "sidecar", "events"):
            found = index.run_files(
                DATA, config["task"], subject, config["sessions"], config["runs"], kind
            )
        elif kind == "masks":
            found = index.mask_files(DATA, config["task"], subject)
        elif kind == "brain_mask":
            found = index.mask_files(DATA, config["task"], subject)[:1]
        elif kind == "stimuli_table":
            found = [index.stimuli_table(DATA)]
        else:
            found = list(index.stimulus_images(DATA))
        return [f for f in found if os.path.exists(f)]

    return files


def check_config_against_dataset():
    """Config values checked against the dataset and the model registry, at DAG build."""
    from brainpipe.validation import check_config_against_dataset as check

    # None: not known before the download; checked later
    rois, n_shared = DATASET_ADAPTER.known_facts(DATASET_ENTRY, config, DATA)
    check(config, rois, n_shared)


check_config_against_dataset()
