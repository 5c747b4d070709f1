from brainpipe.generate.jobs import reconstruct
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    reconstruct(
        snakemake.input.betas,
        snakemake.input.splits,
        snakemake.input.latents,
        snakemake.input.weights,
        snakemake.wildcards.roi,
        snakemake.wildcards.subject,
        snakemake.output.store,
        snakemake.output.metrics,
        snakemake.config,
        threads=snakemake.threads,
        diffusion=(snakemake.input.diffusion or [None])[0],
        embeddings=(snakemake.input.embeddings or [None])[0],
    )
