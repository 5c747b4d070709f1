from brainpipe.generate.jobs import fit_diffusion
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    fit_diffusion(
        snakemake.input.latents,
        snakemake.input.weights,
        snakemake.output.unet,
        snakemake.output.embeddings,
        snakemake.config,
        threads=snakemake.threads,
    )
