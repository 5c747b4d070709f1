from brainpipe.features.weights import fetch_weights
from brainpipe.generate import weights as generate_weights
from brainpipe.generate.jobs import generate_params
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    label = snakemake.wildcards.features
    if label.startswith("generate"):  # the generation stage's files
        generate_weights.fetch(
            generate_params(snakemake.config),
            snakemake.config.get("features", {}),
            label,
            manifest=snakemake.output.manifest,
        )
    else:
        fetch_weights(
            snakemake.config.get("features", {}),
            label,
            manifest=snakemake.output.manifest,
        )
