from brainpipe.align.decoding import write_aligned_decoding_scores
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    write_aligned_decoding_scores(
        list(snakemake.input.stores),
        list(snakemake.input.features),
        snakemake.output.scores,
        dict(snakemake.params.models),
    )
