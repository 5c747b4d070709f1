# Cross-subject alignment into a shared space, one job per method (config align.methods),
# fitted on the shared stimuli of the training split, applied to every trial.


rule align:
    input:
        betas=expand(f"{RESULTS}/sub-{{subject}}/betas.zarr", subject=config["subjects"]),
        splits=f"{RESULTS}/splits.tsv",
    output:
        store=directory(f"{RESULTS}/align/{{method}}.zarr"),
    wildcard_constraints:
        method="[a-z_]+",
    params:
        subjects=config["subjects"],
        method_params=lambda wc: align_method_params(wc.method),
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=30,
    log:
        f"{LOGS}/align/{{method}}.log",
    benchmark:
        f"{BENCH}/align/{{method}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/align.py"


rule align_scores:
    input:
        stores=align_stores(),
        betas=expand(f"{RESULTS}/sub-{{subject}}/betas.zarr", subject=config["subjects"]),
    output:
        scores=f"{RESULTS}/align/crosssubject.tsv",
    params:
        subjects=config["subjects"],
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{LOGS}/align/crosssubject.log",
    benchmark:
        f"{BENCH}/align/crosssubject.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/align_scores.py"


rule align_encoding:
    input:
        stores=align_stores(),
        betas=expand(f"{RESULTS}/sub-{{subject}}/betas.zarr", subject=config["subjects"]),
        features=expand(f"{RESULTS}/features/{{features}}.zarr", features=align_encoding_features()),
    output:
        scores=f"{RESULTS}/align/encoding.tsv",
    params:
        subjects=config["subjects"],
        alphas=config.get("ridge", {}).get("alphas"),
    resources:
        mem_mb=per_attempt(2000),
        runtime=20,
    log:
        f"{LOGS}/align/encoding.log",
    benchmark:
        f"{BENCH}/align/encoding.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/align_encoding.py"


rule align_decoding:
    input:
        stores=align_stores(),
        features=expand(f"{RESULTS}/features/{{features}}.zarr", features=align_decoding_features()),
    output:
        scores=f"{RESULTS}/align/decoding.tsv",
    params:
        # the registry's decoders (align.decoding_models) with their model_params blocks
        models=align_decoding_models(),
    resources:
        mem_mb=per_attempt(2000),
        runtime=20,
    log:
        f"{LOGS}/align/decoding.log",
    benchmark:
        f"{BENCH}/align/decoding.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/align_decoding.py"
