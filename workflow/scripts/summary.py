from brainpipe.encoding import collect_summary
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    collect_summary(snakemake.input.metrics, snakemake.output.summary)
