# Stimulus features per feature model, PCA fitted on training stimuli only; spatial
# feature maps for the attention readout.
# Hand-made models (brainpipe.features) and pretrained networks (features.networks in the
# config, brainpipe.features.networks) share the rule; network weights come from a local
# cache that the `weights` rule fills and verifies once (never during a feature job).

from brainpipe.features.weights import (
    needs_files,
    network_resource,
    network_settings,
    weights_input,
)

FEATURES_CFG = config.get("features", {})
NETWORKS = network_settings(FEATURES_CFG)
# networks with files to fetch (weights, or only config / tokenizer files for `random`)
FETCHED = [label for label in NETWORKS if needs_files(FEATURES_CFG, label)]
# and the generation stage's published files (brainpipe.generate.weights), when it is on
if GENERATE["rois"]:
    from brainpipe.generate.weights import requests as generate_weight_requests

    FETCHED += list(generate_weight_requests(GENERATE, FEATURES_CFG))
WEIGHT_MANIFESTS = f"{config['results_dir']}/weights"


localrules:
    weights,
    fetch_weights,


rule fetch_weights:
    output:
        manifest=f"{WEIGHT_MANIFESTS}/{{features}}.json",
    log:
        f"{LOGS}/weights/{{features}}.log",
    benchmark:
        f"{BENCH}/weights/{{features}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/fetch_weights.py"


rule weights:
    input:
        expand(f"{WEIGHT_MANIFESTS}/{{features}}.json", features=FETCHED),


rule features:
    input:
        stimuli=raw("stimuli_table"),
        images=raw("stimulus_images"),
        checked=f"{RESULTS}/stimuli_manifest.json",
        splits=f"{RESULTS}/splits.tsv",
        weights=weights_input(FEATURES_CFG, WEIGHT_MANIFESTS),
    output:
        features=directory(f"{RESULTS}/features/{{features}}.zarr"),
    params:
        root=DATA,
        n_components=config["features"]["n_components"],
    threads: 1
    resources:
        mem_mb=network_resource(FEATURES_CFG, "mem_mb", 2000, 8000),  # grows per attempt
        gpu=network_resource(FEATURES_CFG, "gpu", 0, 0),
        runtime=30,
    log:
        f"{LOGS}/features/{{features}}.log",
    benchmark:
        f"{BENCH}/features/{{features}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/features.py"


rule spatial_features:
    input:
        stimuli=raw("stimuli_table"),
        images=raw("stimulus_images"),
        checked=f"{RESULTS}/stimuli_manifest.json",
        splits=f"{RESULTS}/splits.tsv",
        # a configured network: its token layer, from its feature store
        network=lambda wc: (
            [f"{RESULTS}/features/{wc.features}.zarr"] if wc.features in NETWORKS else []
        ),
    output:
        features=directory(f"{RESULTS}/features/spatial/{{features}}.zarr"),
    params:
        root=DATA,
    threads: 1
    resources:
        # a network's token layer is z-scored and written a chunk of stimuli at a time
        # (brainpipe.features.spatial): an NSD subject's DINOv2 tokens (7.9 GB) fit in this
        mem_mb=2000,
        runtime=30,
    log:
        f"{LOGS}/features/spatial_{{features}}.log",
    benchmark:
        f"{BENCH}/features/spatial_{{features}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/spatial_features.py"
