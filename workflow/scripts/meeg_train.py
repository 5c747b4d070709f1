from brainpipe.logs import log_to
from brainpipe.meeg.jobs import train_job

with log_to(snakemake.log[0]):
    train_job(
        snakemake.wildcards.model,
        snakemake.input.epochs,
        snakemake.input.features,
        snakemake.output.weights,
        snakemake.output.predictions,
        config=snakemake.config,
    )
