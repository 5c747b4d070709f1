from brainpipe.generate.caption_jobs import caption_job
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    caption_job(
        snakemake.input.predictions,
        snakemake.input.features,
        snakemake.input.stimuli[0],
        snakemake.input.splits,
        snakemake.input.captioner,
        snakemake.wildcards.subject,
        snakemake.wildcards.roi,
        snakemake.output.captions,
        snakemake.config,
        threads=snakemake.threads,
    )
