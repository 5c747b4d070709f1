# Single-trial betas (LSA or GLMsingle, config betas.method) and the noise ceiling from repeats, into betas.zarr.


rule betas:
    input:
        events=raw("events"),
        masks=raw("masks"),
        checked=f"{RESULTS}/sub-{{subject}}/events_manifest.json",
        preproc=f"{RESULTS}/sub-{{subject}}/preproc.zarr",
    output:
        betas=directory(f"{RESULTS}/sub-{{subject}}/betas.zarr"),
    params:
        root=DATA,
        sessions=config["sessions"],
        runs=config["runs"],
        task=config["task"],
        voxel_chunk=config["betas"]["voxel_chunk"],
    threads: 1
    resources:
        mem_mb=per_attempt(4000),  # also sizes the GLMsingle voxel chunk
        runtime=120,
    log:
        f"{LOGS}/betas/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/betas/sub-{{subject}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/betas.py"
