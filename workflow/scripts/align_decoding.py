from brainpipe.align.decoding import DEFAULT_ALPHAS, write_aligned_decoding_scores
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    write_aligned_decoding_scores(
        list(snakemake.input.stores),
        list(snakemake.input.features),
        snakemake.output.scores,
        snakemake.params.alphas or DEFAULT_ALPHAS,
    )
