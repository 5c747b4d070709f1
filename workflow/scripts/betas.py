from brainpipe.betas import estimate_betas
from brainpipe.bids import BidsLayout, run_keys
from brainpipe.compute import dask_resources
from brainpipe.logs import log_to

with log_to(snakemake.log[0]), dask_resources(snakemake.threads, snakemake.resources.mem_mb):
    p = snakemake.params
    subject = snakemake.wildcards.subject
    layout = BidsLayout(snakemake.params.root, p.task)
    estimate_betas(
        snakemake.input.preproc,
        layout,
        subject,
        run_keys(subject, p.sessions, p.runs, layout),
        snakemake.output.betas,
        voxel_chunk=p.voxel_chunk,
        config=snakemake.config,
        mem_mb=snakemake.resources.mem_mb,
        threads=snakemake.threads,
    )
