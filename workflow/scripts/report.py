from brainpipe.logs import log_to
from brainpipe.report import ReportInputs, write_report
from brainpipe.report.retrieval import stimulus_image_files

with log_to(snakemake.log[0]):
    config = snakemake.config
    inputs = ReportInputs(
        scores=list(snakemake.input.scores),
        betas=dict(zip(snakemake.params.subjects, snakemake.input.betas, strict=True)),
        dataset=config["dataset"],
        data_dir=snakemake.input.data,
        stimulus_images=stimulus_image_files(snakemake.input.data),
        recipe=snakemake.params.recipe,
        align_scores=snakemake.input.align_scores or None,
        align_encoding=snakemake.input.align_encoding or None,
        align_decoding=snakemake.input.align_decoding or None,
        timeseries_scores=snakemake.input.timeseries_scores or None,
        reconstructions=list(snakemake.input.reconstructions),
        run={
            "dataset": config["dataset"],
            "subjects": snakemake.params.subjects,
            "split": config.get("splits", {}),
        },
    )
    write_report(
        snakemake.input.summary,
        snakemake.output.report,
        snakemake.params.title,
        inputs,
        snakemake.output.figures,
    )
