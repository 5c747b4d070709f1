from brainpipe.logs import log_to
from brainpipe.models.jobs import pretrain_job

with log_to(snakemake.log[0]):
    subjects = snakemake.params.subjects
    pretrain_job(
        snakemake.wildcards.model,
        snakemake.wildcards.roi,
        dict(zip(subjects, snakemake.input.betas, strict=True)),
        list(snakemake.input.features),
        snakemake.input.splits,
        dict(zip(subjects, snakemake.output.weights, strict=True)),
        config=snakemake.config,
    )
