# Config loading and validation, wildcard constraints, and the input functions
# that turn the config into target lists.

from brainpipe.config import validate_config

validate_config(config, source="config (config/config.yaml and --config overrides)")

DATASET = config["dataset"]
DATA = f"{config['data_dir']}/{DATASET}"
RESULTS = f"{config['results_dir']}/{DATASET}"
LOGS = f"logs/{DATASET}"
ENV = "../envs/brainpipe.yaml"


wildcard_constraints:
    subject="[A-Za-z0-9]+",
    roi="[A-Za-z0-9]+",
    model="[a-z0-9]+",
    features="[a-z0-9]+",


def model_dirs():
    """One directory per subject × ROI × model × feature model: the training fan-out."""
    return expand(
        f"{RESULTS}/models/sub-{{subject}}/{{roi}}/{{model}}-{{features}}",
        subject=config["subjects"],
        roi=config["rois"],
        model=config["models"],
        features=config["feature_models"],
    )
