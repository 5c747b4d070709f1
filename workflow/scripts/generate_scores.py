from brainpipe.generate.jobs import collect
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    collect(snakemake.input.metrics, snakemake.output.table)
