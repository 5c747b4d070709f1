from brainpipe.logs import log_to
from brainpipe.meeg.jobs import write_meeg_report

with log_to(snakemake.log[0]):
    write_meeg_report(snakemake.input.summary, snakemake.output.report, snakemake.params.title)
