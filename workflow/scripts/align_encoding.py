from brainpipe.align.encoding import DEFAULT_ALPHAS, write_aligned_encoding_scores
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    write_aligned_encoding_scores(
        list(snakemake.input.stores),
        dict(zip(snakemake.params.subjects, snakemake.input.betas, strict=True)),
        list(snakemake.input.features),
        snakemake.output.scores,
        snakemake.params.alphas or DEFAULT_ALPHAS,
    )
