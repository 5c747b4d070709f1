# Shared response over time (config `timeseries`): subjects aligned on their time series
# over one stimulus clock (a movie, shared-stimulus runs). One input store per subject,
# then one job per method x held-out subject: fitted on the other subjects' training time
# points, the held-out subject mapped in from its own training time points, its test
# segments matched against the others' (brainpipe.align.timeseries_jobs).


rule timeseries:
    input:
        preproc=timeseries_preproc_input,
    output:
        store=directory(f"{RESULTS}/timeseries/sub-{{subject}}.zarr"),
    params:
        source=TIMESERIES["source"],
    resources:
        mem_mb=per_attempt(2000),
        runtime=10,
    benchmark:
        f"{BENCH}/timeseries/sub-{{subject}}.tsv"
    log:
        f"{LOGS}/timeseries/sub-{{subject}}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/timeseries.py"


rule timeseries_fit:
    input:
        stores=expand(f"{RESULTS}/timeseries/sub-{{subject}}.zarr", subject=config["subjects"]),
    output:
        store=directory(f"{RESULTS}/timeseries/{{method}}/sub-{{subject}}.zarr"),
        metrics=f"{RESULTS}/timeseries/{{method}}/sub-{{subject}}.json",
    wildcard_constraints:
        method="[a-z]+",
    params:
        subjects=config["subjects"],
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=30,
    benchmark:
        f"{BENCH}/timeseries/{{method}}/sub-{{subject}}.tsv"
    log:
        f"{LOGS}/timeseries/{{method}}/sub-{{subject}}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/timeseries_fit.py"


rule timeseries_scores:
    input:
        metrics=timeseries_metric_files(),
    output:
        table=f"{RESULTS}/timeseries/matching.tsv",
        summary=f"{RESULTS}/timeseries/matching.json",
    resources:
        mem_mb=1000,
        runtime=5,
    benchmark:
        f"{BENCH}/timeseries/matching.tsv"
    log:
        f"{LOGS}/timeseries/matching.log",
    conda:
        ENV
    script:
        "../workflow/scripts/timeseries_scores.py"
