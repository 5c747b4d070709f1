from brainpipe.align import fit_alignment_store
from brainpipe.compute import dask_resources
from brainpipe.logs import log_to

with log_to(snakemake.log[0]), dask_resources(snakemake.threads, snakemake.resources.mem_mb):
    fit_alignment_store(
        dict(zip(snakemake.params.subjects, snakemake.input.betas, strict=True)),
        snakemake.input.splits,
        snakemake.output.store,
        snakemake.wildcards.method,
        snakemake.params.method_params,
        config=snakemake.config,
    )
