from brainpipe.logs import log_to
from brainpipe.models.summary import collect_summary

with log_to(snakemake.log[0]):
    collect_summary(
        snakemake.input.metrics,
        snakemake.output.summary,
        aligned_decoding=snakemake.input.aligned_decoding or None,
        dataset=snakemake.params.dataset,
        aligned_roi=snakemake.params.aligned_roi,
    )
