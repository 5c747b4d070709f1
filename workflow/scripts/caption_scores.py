from brainpipe.generate.caption_jobs import score_captions
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    score_captions(snakemake.input.captions, snakemake.output.table, snakemake.config)
