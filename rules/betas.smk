# Single-trial betas (LSA) and the noise ceiling from repeats, into betas.zarr.


rule betas:
    input:
        data=DATA,
        preproc=f"{RESULTS}/sub-{{subject}}/preproc.zarr",
    output:
        betas=directory(f"{RESULTS}/sub-{{subject}}/betas.zarr"),
    params:
        sessions=config["sessions"],
        runs=config["runs"],
        task=config["task"],
        voxel_chunk=config.get("betas", {}).get("voxel_chunk", 4096),
    log:
        f"{LOGS}/betas/sub-{{subject}}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/betas.py"
