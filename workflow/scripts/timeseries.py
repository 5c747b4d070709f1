from brainpipe.align.timeseries_jobs import write_timeseries_input
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    write_timeseries_input(
        snakemake.wildcards.subject,
        snakemake.output.store,
        snakemake.config,
        preproc=snakemake.input.preproc or None,
    )
