from brainpipe.align.timeseries_jobs import collect_matching
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    collect_matching(snakemake.input.metrics, snakemake.output.table, snakemake.output.summary)
