from brainpipe.align.crosssubject import write_cross_subject_scores
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    write_cross_subject_scores(
        list(snakemake.input.stores),
        dict(zip(snakemake.params.subjects, snakemake.input.betas, strict=True)),
        snakemake.output.scores,
    )
