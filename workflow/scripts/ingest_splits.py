from brainpipe.datasets.adapters import IngestRequest
from brainpipe.datasets.registry import load_entry
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    entry = load_entry(snakemake.params.dataset, snakemake.params.registry)
    entry.adapter_for_config(snakemake.config).ingest_splits(
        IngestRequest(
            entry=entry,
            source=entry.merged_source(snakemake.config),
            data=snakemake.input.data,
            subjects=snakemake.params.subjects,
            sessions=snakemake.params.sessions,
            out=snakemake.output.splits,
        )
    )
