from brainpipe.align.timeseries_jobs import write_heldout_fit
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    write_heldout_fit(
        dict(zip(snakemake.params.subjects, snakemake.input.stores, strict=True)),
        snakemake.wildcards.subject,
        snakemake.wildcards.method,
        snakemake.output.store,
        snakemake.output.metrics,
        snakemake.config,
        threads=snakemake.threads,
    )
