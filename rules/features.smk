# Stimulus features per feature model, PCA fitted on training stimuli only.


rule features:
    input:
        data=DATA,
        splits=f"{RESULTS}/splits.tsv",
    output:
        features=directory(f"{RESULTS}/features/{{features}}.zarr"),
    params:
        n_components=config.get("features", {}).get("n_components", 32),
    log:
        f"{LOGS}/features/{{features}}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/features.py"
