from brainpipe.generate.jobs import fit_generator
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    fit_generator(
        snakemake.params.root,
        snakemake.input.splits,
        snakemake.output.weights,
        snakemake.output.latents,
        snakemake.config,
        threads=snakemake.threads,
    )
