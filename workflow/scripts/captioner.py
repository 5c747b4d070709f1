from brainpipe.generate.caption_jobs import fit_captioner_job
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    fit_captioner_job(
        snakemake.input.stimuli[0],
        snakemake.input.features,
        snakemake.input.splits,
        snakemake.output.captioner,
        snakemake.config,
        threads=snakemake.threads,
    )
