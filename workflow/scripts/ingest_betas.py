from brainpipe.compute import dask_resources
from brainpipe.datasets.nsd import NsdOptions, ingest_nsd_subject
from brainpipe.datasets.registry import load_entry
from brainpipe.logs import log_to

with log_to(snakemake.log[0]), dask_resources(snakemake.threads, snakemake.resources.mem_mb):
    entry = load_entry(snakemake.params.dataset, snakemake.params.registry)
    opts = NsdOptions.from_config({**entry.info, **entry.merged_source(snakemake.config)})
    ingest = ingest_nsd_subject
    if opts.space == "fsaverage":
        from brainpipe.datasets.nsd_surface import ingest_nsd_surface_subject as ingest
    ingest(
        snakemake.input.data,
        snakemake.wildcards.subject,
        snakemake.params.sessions,
        snakemake.output.betas,
        opts,
        splits_tsv=snakemake.input.splits,
        voxel_chunk=snakemake.params.voxel_chunk,
        config=snakemake.config,
    )
