# The M/EEG branch (registry `modality: meeg`: THINGS-EEG2, THINGS-MEG, synthetic_meeg):
# raw recordings -> epochs.zarr (MNE; MVNN fitted on training epochs) -> per subject x
# model x feature model: training against the feature registry's image embeddings ->
# zero-shot retrieval -> summary and report (accuracy over time, retrieval scores).


rule meeg_preprocess:
    input:
        data=DATA,
        splits=f"{RESULTS}/splits.tsv",
    output:
        epochs=directory(f"{RESULTS}/sub-{{subject}}/epochs.zarr"),
    params:
        fmt=DATASET_ENTRY.info.get("format"),
        sessions=config["sessions"],
        task=config["task"],
        block={**DATASET_ENTRY.info.get("meeg", {}), **config.get("meeg", {})},
        dataset=DATASET,
    threads: 1
    resources:
        mem_mb=per_attempt(6000),  # one THINGS-EEG2 session at a time (benchmarks/meeg.py measures it)
        runtime=120,
    log:
        f"{LOGS}/meeg_preprocess/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/meeg_preprocess/sub-{{subject}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/meeg_preprocess.py"


rule meeg_train:
    input:
        epochs=f"{RESULTS}/sub-{{subject}}/epochs.zarr",
        features=f"{RESULTS}/features/{{features}}.zarr",
    output:
        weights=f"{RESULTS}/models/sub-{{subject}}/sensors/{{model}}-{{features}}/weights.safetensors",
        predictions=directory(
            f"{RESULTS}/models/sub-{{subject}}/sensors/{{model}}-{{features}}/predictions.zarr"
        ),
    threads: model_resource("threads")
    resources:
        mem_mb=model_mem_mb,
        runtime=model_resource("runtime"),
        gpu=model_gpu,
    log:
        f"{LOGS}/meeg_train/sub-{{subject}}_{{model}}-{{features}}.log",
    benchmark:
        f"{BENCH}/meeg_train/sub-{{subject}}_{{model}}-{{features}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/meeg_train.py"


rule meeg_evaluate:
    input:
        predictions=f"{RESULTS}/models/sub-{{subject}}/sensors/{{model}}-{{features}}/predictions.zarr",
        embedding=f"{RESULTS}/features/{{features}}.zarr",
    output:
        metrics=f"{RESULTS}/models/sub-{{subject}}/sensors/{{model}}-{{features}}/metrics.json",
    params:
        dataset=DATASET,
        n_way=lambda wildcards: _params(wildcards.model)["n_way"],
        n_boot=1000,
    resources:
        mem_mb=per_attempt(1000),
        runtime=10,
    log:
        f"{LOGS}/meeg_evaluate/sub-{{subject}}_{{model}}-{{features}}.log",
    benchmark:
        f"{BENCH}/meeg_evaluate/sub-{{subject}}_{{model}}-{{features}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/meeg_evaluate.py"


rule meeg_summary:
    input:
        metrics=[f"{d}/metrics.json" for d in meeg_model_dirs()],
        # the script is shared with `summary`; M/EEG has no aligned-space decoders
        aligned_decoding=[],
    output:
        summary=f"{RESULTS}/summary.tsv",
    params:
        dataset=DATASET,
        aligned_roi="",
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


rule meeg_report:
    input:
        summary=f"{RESULTS}/summary.tsv",
        predictions=[f"{d}/predictions.zarr" for d in meeg_model_dirs()],
        data=DATA,
    output:
        report=f"{RESULTS}/report.html",
        figures=report(
            directory(f"{RESULTS}/report_figures"),
            patterns=["{name}.png"],
            caption="../workflow/report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    params:
        title=f"brainpipe: {DATASET} (M/EEG)",
        recipe=config.get("recipe"),
        jobs=meeg_model_jobs(),
        results=RESULTS,
    resources:
        mem_mb=per_attempt(1000),
        runtime=5,
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/meeg_report.py"
