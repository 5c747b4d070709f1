# Mask, detrend, high-pass and convert to percent signal change (nilearn).


rule preprocess:
    input:
        bold=raw("bold"),
        sidecars=raw("sidecar"),
        mask=raw("brain_mask"),
        manifest=f"{RESULTS}/sub-{{subject}}/inputs_manifest.json",
        # every other input is checked first too; ancient: their re-check reruns nothing here
        events_checked=ancient(f"{RESULTS}/sub-{{subject}}/events_manifest.json"),
        stimuli_checked=ancient(f"{RESULTS}/stimuli_manifest.json"),
    output:
        preproc=directory(f"{RESULTS}/sub-{{subject}}/preproc.zarr"),
    params:
        root=DATA,
        sessions=config["sessions"],
        runs=config["runs"],
        task=config["task"],
        options=config.get("preprocess", {}),
    threads: 1
    resources:
        mem_mb=per_attempt(2000),  # Dask inside the job sizes its chunks from this
        runtime=60,
    log:
        f"{LOGS}/preprocess/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/preprocess/sub-{{subject}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/preprocess.py"
