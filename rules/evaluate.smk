# Test-split scores per voxel, then one tidy summary per dataset.


rule evaluate:
    input:
        betas=f"{RESULTS}/sub-{{subject}}/betas.zarr",
        predictions=f"{RESULTS}/models/sub-{{subject}}/{{roi}}/{{model}}-{{features}}/predictions.zarr",
    output:
        metrics=f"{RESULTS}/models/sub-{{subject}}/{{roi}}/{{model}}-{{features}}/metrics.json",
        scores=directory(
            f"{RESULTS}/models/sub-{{subject}}/{{roi}}/{{model}}-{{features}}/scores.zarr"
        ),
    params:
        dataset=DATASET,
    log:
        f"{LOGS}/evaluate/sub-{{subject}}_{{roi}}_{{model}}-{{features}}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/evaluate.py"


rule summary:
    input:
        metrics=[f"{d}/metrics.json" for d in model_dirs()],
    output:
        summary=f"{RESULTS}/summary.tsv",
    log:
        f"{LOGS}/summary.log",
    conda:
        ENV
    script:
        "../workflow/scripts/summary.py"
