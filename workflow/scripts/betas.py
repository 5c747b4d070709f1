from brainpipe.betas import estimate_subject_betas
from brainpipe.bids import BidsLayout, run_keys
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    p = snakemake.params
    subject = snakemake.wildcards.subject
    estimate_subject_betas(
        snakemake.input.preproc,
        BidsLayout(snakemake.input.data, p.task),
        subject,
        run_keys(subject, p.sessions, p.runs),
        snakemake.output.betas,
        voxel_chunk=p.voxel_chunk,
        config=snakemake.config,
    )
