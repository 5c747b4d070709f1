# Encoding models, one job per subject × ROI × model × feature model.


rule train:
    input:
        betas=f"{RESULTS}/sub-{{subject}}/betas.zarr",
        features=f"{RESULTS}/features/{{features}}.zarr",
        splits=f"{RESULTS}/splits.tsv",
    output:
        weights=f"{RESULTS}/models/sub-{{subject}}/{{roi}}/{{model}}-{{features}}/weights.safetensors",
        predictions=directory(
            f"{RESULTS}/models/sub-{{subject}}/{{roi}}/{{model}}-{{features}}/predictions.zarr"
        ),
    params:
        alphas=config.get("ridge", {}).get("alphas", [0.1, 1, 10, 100, 1000, 10000]),
        n_folds=config.get("ridge", {}).get("n_folds", 5),
    log:
        f"{LOGS}/train/sub-{{subject}}_{{roi}}_{{model}}-{{features}}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/train.py"
