from brainpipe.logs import log_to
from brainpipe.meeg.jobs import preprocess_job

with log_to(snakemake.log[0]):
    preprocess_job(
        snakemake.params.fmt,
        snakemake.input.data,
        snakemake.wildcards.subject,
        snakemake.input.splits,
        snakemake.output.epochs,
        snakemake.params.block,
        sessions=snakemake.params.sessions,
        task=snakemake.params.task,
        dataset=snakemake.params.dataset,
    )
