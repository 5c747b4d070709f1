# Test-split scores per job (encoding: per voxel; decoding: retrieval), then one tidy
# summary per dataset.


rule evaluate:
    input:
        betas=f"{RESULTS}/sub-{{subject}}/betas.zarr",
        predictions=f"{RESULTS}/models/sub-{{subject}}/{{roi}}/{{model}}-{{features}}/predictions.zarr",
        embedding=embedding_input,
    output:
        metrics=f"{RESULTS}/models/sub-{{subject}}/{{roi}}/{{model}}-{{features}}/metrics.json",
        scores=directory(
            f"{RESULTS}/models/sub-{{subject}}/{{roi}}/{{model}}-{{features}}/scores.zarr"
        ),
    params:
        dataset=DATASET,
        n_boot=config["evaluate"]["n_boot"],
        n_way=config["evaluate"]["n_way"],
        draws=config["evaluate"]["draws"],
    resources:
        mem_mb=per_attempt(2000),
        runtime=10,
    log:
        f"{LOGS}/evaluate/sub-{{subject}}_{{roi}}_{{model}}-{{features}}.log",
    benchmark:
        f"{BENCH}/evaluate/sub-{{subject}}_{{roi}}_{{model}}-{{features}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/evaluate.py"


rule summary:
    input:
        metrics=[f"{d}/metrics.json" for d in model_dirs()],
        aligned_decoding=f"{RESULTS}/align/decoding.tsv" if align_decoding_features() else [],
    output:
        summary=f"{RESULTS}/summary.tsv",
    params:
        dataset=DATASET,
        aligned_roi=align_roi_label(),
    resources:
        mem_mb=per_attempt(1000),
        runtime=5,
    log:
        f"{LOGS}/summary.log",
    benchmark:
        f"{BENCH}/summary.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/summary.py"
