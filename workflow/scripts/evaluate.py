from brainpipe.encoding import evaluate_encoding_model
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    w = snakemake.wildcards
    evaluate_encoding_model(
        snakemake.input.betas,
        snakemake.input.predictions,
        w.roi,
        snakemake.output.metrics,
        snakemake.output.scores,
        labels={
            "dataset": snakemake.params.dataset,
            "subject": w.subject,
            "model": w.model,
            "features": w.features,
        },
        config=snakemake.config,
    )
