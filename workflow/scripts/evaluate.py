from brainpipe.logs import log_to
from brainpipe.models import get_model, model_params
from brainpipe.models.jobs import evaluate_job

with log_to(snakemake.log[0]):
    w = snakemake.wildcards
    features = w.features
    if get_model(w.model).inputs == "bands":
        features = "+".join(model_params(w.model, snakemake.config)["bands"])
    evaluate_job(
        w.model,
        w.roi,
        snakemake.input.betas,
        snakemake.input.predictions,
        snakemake.output.metrics,
        snakemake.output.scores,
        labels={
            "dataset": snakemake.params.dataset,
            "subject": w.subject,
            "model": w.model,
            "features": features,
        },
        embedding_path=snakemake.input.embedding or None,
        config=snakemake.config,
        n_boot=snakemake.params.n_boot,
        n_way=snakemake.params.n_way,
        draws=snakemake.params.draws,
    )
