from brainpipe.features.weights import fetch_weights
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    fetch_weights(
        snakemake.config.get("features", {}),
        snakemake.wildcards.features,
        manifest=snakemake.output.manifest,
    )
