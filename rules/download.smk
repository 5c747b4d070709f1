# Get the dataset (for `synthetic`: generate it) and check it before any compute.


rule download:
    output:
        data=directory(DATA),
    params:
        dataset=DATASET,
        generator=config.get("synthetic_meeg" if MEEG else "synthetic", {}),
    log:
        f"{LOGS}/download.log",
    conda:
        ENV
    script:
        "../workflow/scripts/download.py"


# One check per subject, so adding a subject re-checks only that subject.
rule validate_inputs:
    input:
        data=DATA,
    output:
        manifest=f"{RESULTS}/sub-{{subject}}/inputs_manifest.json",
    params:
        sessions=config["sessions"],
        runs=config["runs"],
        tr=config["tr"],
        task=config["task"],
    log:
        f"{LOGS}/validate_inputs/sub-{{subject}}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/validate_inputs.py"


rule splits:
    input:
        data=DATA,
    output:
        splits=f"{RESULTS}/splits.tsv",
    params:
        # M/EEG: test concepts must stay unseen (zero-shot), so no test image moves to train
        shared_train_fraction=0.0
        if MEEG
        else config.get("splits", {}).get("shared_train_fraction", 0.0),
    log:
        f"{LOGS}/splits.log",
    conda:
        ENV
    script:
        "../workflow/scripts/splits.py"
