from brainpipe.encoding import train_encoding_model
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    train_encoding_model(
        snakemake.input.betas,
        snakemake.input.features,
        snakemake.input.splits,
        snakemake.wildcards.roi,
        snakemake.output.weights,
        snakemake.output.predictions,
        alphas=snakemake.params.alphas,
        n_folds=snakemake.params.n_folds,
        config=snakemake.config,
    )
