from brainpipe.logs import log_to
from brainpipe.models.jobs import train_job

with log_to(snakemake.log[0]):
    w = snakemake.wildcards
    train_job(
        w.model,
        w.subject,
        w.roi,
        snakemake.input.betas,
        list(snakemake.input.features),
        snakemake.input.splits,
        snakemake.output.weights,
        snakemake.output.predictions,
        config=snakemake.config,
        pretrained_path=snakemake.input.pretrained or None,
    )
