from brainpipe.logs import log_to
from brainpipe.report import write_report

with log_to(snakemake.log[0]):
    write_report(snakemake.input.summary, snakemake.output.report, snakemake.params.title)
