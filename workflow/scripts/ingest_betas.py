from brainpipe.compute import dask_resources
from brainpipe.datasets.adapters import IngestRequest
from brainpipe.datasets.registry import load_entry
from brainpipe.logs import log_to

with log_to(snakemake.log[0]), dask_resources(snakemake.threads, snakemake.resources.mem_mb):
    entry = load_entry(snakemake.params.dataset, snakemake.params.registry)
    entry.adapter_for_config(snakemake.config).ingest_betas(
        IngestRequest(
            entry=entry,
            # source.workers is the job's threads (as granted: --cores may scale them down)
            source={**entry.merged_source(snakemake.config), "workers": snakemake.threads},
            data=snakemake.input.data,
            subjects=[snakemake.wildcards.subject],
            sessions=snakemake.params.sessions,
            out=snakemake.output.betas,
            splits_tsv=snakemake.input.splits,
            voxel_chunk=snakemake.params.voxel_chunk,
            config=snakemake.config,
        )
    )
