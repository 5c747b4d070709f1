from brainpipe.logs import log_to
from brainpipe.meeg.jobs import evaluate_job

with log_to(snakemake.log[0]):
    w = snakemake.wildcards
    evaluate_job(
        snakemake.input.predictions,
        snakemake.input.embedding,
        snakemake.output.metrics,
        labels={
            "dataset": snakemake.params.dataset,
            "subject": w.subject,
            "model": w.model,
            "features": w.features,
        },
        n_way=snakemake.params.n_way,
        n_boot=snakemake.params.n_boot,
    )
