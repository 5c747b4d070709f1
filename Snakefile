# brainpipe: from a multi-subject brain dataset to evaluated encoding models.
#
#   snakemake --cores 2                    # the default config: embedded synthetic dataset
#   snakemake --profile cluster            # on SLURM
#
# Rules are thin; the work is done by the `brainpipe` package in workflow/brainpipe.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/ingest.smk"
include: "rules/splits.smk"
include: "rules/features.smk"


# M/EEG datasets (registry `modality: meeg`) take the M/EEG branch: epochs instead of betas.
if MEEG:

    include: "rules/meeg.smk"

else:

    include: "rules/preprocess.smk"
    include: "rules/betas.smk"
    include: "rules/align.smk"
    include: "rules/timeseries.smk"
    include: "rules/generate.smk"
    include: "rules/train.smk"
    include: "rules/evaluate.smk"
    include: "rules/report.smk"


onstart:
    # a GPU job on a SLURM cluster without GPUs: a clear error now, not a failed sbatch later
    check_gpu_requests()


rule all:
    input:
        f"{RESULTS}/summary.tsv",
        f"{RESULTS}/report.html",
        [] if MEEG else align_stores(),
        [] if MEEG else timeseries_targets(),
        [] if MEEG else generate_targets(),
    default_target: True
