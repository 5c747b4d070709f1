# Stimulus features per feature model, PCA fitted on training stimuli only; spatial
# feature maps for the attention readout.


rule features:
    input:
        stimuli=raw("stimuli_table"),
        images=raw("stimulus_images"),
        checked=f"{RESULTS}/stimuli_manifest.json",
        splits=f"{RESULTS}/splits.tsv",
    output:
        features=directory(f"{RESULTS}/features/{{features}}.zarr"),
    params:
        root=DATA,
        n_components=config.get("features", {}).get("n_components", 32),
    threads: 1
    resources:
        mem_mb=per_attempt(2000),  # Dask inside the job sizes its chunks from this
        runtime=30,
    log:
        f"{LOGS}/features/{{features}}.log",
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
    output:
        features=directory(f"{RESULTS}/features/spatial/{{features}}.zarr"),
    params:
        root=DATA,
    log:
        f"{LOGS}/features/spatial_{{features}}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/spatial_features.py"
