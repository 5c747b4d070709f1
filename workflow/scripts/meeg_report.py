from brainpipe.logs import log_to
from brainpipe.meeg.jobs import write_meeg_report

with log_to(snakemake.log[0]):
    config = snakemake.config
    write_meeg_report(
        snakemake.input.summary,
        snakemake.output.report,
        snakemake.params.title,
        recipe=snakemake.params.recipe,
        run={
            "dataset": config["dataset"],
            "subjects": config["subjects"],
            "split": "the dataset's training and test images (zero-shot: test concepts unseen)",
        },
    )
