# Config loading and validation, wildcard constraints, and the input functions
# that turn the config into target lists.

from brainpipe.config import validate_config

validate_config(config, source="config (config/config.yaml and --config overrides)")

DATASET = config["dataset"]
DATA = f"{config['data_dir']}/{DATASET}"
RESULTS = f"{config['results_dir']}/{DATASET}"
LOGS = f"logs/{DATASET}"
ENV = "../envs/brainpipe.yaml"

# The dataset's registry entry (config/datasets/NAME.yaml; read locally, no network).
from brainpipe.datasets.registry import load_entry

DATASET_ENTRY = load_entry(DATASET)
# True when the dataset ships betas (NSD): rules/ingest.smk makes betas.zarr from them.
INGEST_BETAS = DATASET_ENTRY.betas_mode(config) == "ingest"
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


def meeg_model_dirs():
    """One folder per subject x M/EEG model x feature model: the M/EEG fan-out."""
    from brainpipe.meeg.jobs import SENSORS
    from brainpipe.models import get_model, model_params

    dirs = []
    for model in config["models"]:
        if get_model(model).inputs != "epochs":
            raise ValueError(
                f"config models: {model!r} is not an M/EEG model (dataset {DATASET} is M/EEG; "
                "use timedecoder, nice)"
            )
        dirs += expand(
            f"{RESULTS}/models/sub-{{subject}}/{SENSORS}/{model}-{{features}}",
            subject=config["subjects"],
            features=model_params(model, config)["features"],
        )
    return dirs


def align_method_params(method):
    """The `align:` config block narrowed to what `method` uses (defaults in brainpipe.align)."""
    from brainpipe.align import method_params

    return method_params(method, config.get("align", {}))


def align_stores():
    """One store per configured alignment method: the align fan-out."""
    return expand(
        f"{RESULTS}/align/{{method}}.zarr", method=config.get("align", {}).get("methods", [])
    )


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


def model_mem_mb(wildcards, attempt):
    """model_params.<model>.mem_mb on the first attempt, `attempt` times that on retries."""
    return memory_for_attempt(_params(wildcards.model)["mem_mb"], attempt)


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


def embedding_input(wildcards):
    """Decoders are scored against the embeddings of their feature store."""
    if _spec(wildcards.model).kind == "decoding":
        return f"{RESULTS}/features/{wildcards.features}.zarr"
    return []
