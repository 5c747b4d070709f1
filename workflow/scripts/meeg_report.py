from brainpipe.logs import log_to
from brainpipe.meeg.jobs import write_meeg_report
from brainpipe.meeg.synthetic import information_window
from brainpipe.report.retrieval import stimulus_image_files

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
        predictions={
            key: (pred, f"{snakemake.params.results}/features/{key[2]}.zarr")
            for key, pred in zip(snakemake.params.jobs, snakemake.input.predictions, strict=True)
        },
        images=stimulus_image_files(snakemake.input.data),
        figures_dir=snakemake.output.figures,
        truth_window=information_window(snakemake.input.data),
    )
