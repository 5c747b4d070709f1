# Get the dataset (for `synthetic`: generate it) and check it before any compute.


rule download:
    output:
        data=directory(DATA),
    params:
        dataset=DATASET,
        generator=config.get("synthetic", {}),
    log:
        f"{LOGS}/download.log",
    conda:
        ENV
    script:
        "../workflow/scripts/download.py"


rule validate_inputs:
    input:
        data=DATA,
    output:
        manifest=f"{RESULTS}/inputs_manifest.json",
    params:
        subjects=config["subjects"],
        sessions=config["sessions"],
        runs=config["runs"],
        tr=config["tr"],
        rois=config["rois"],
        task=config["task"],
    log:
        f"{LOGS}/validate_inputs.log",
    conda:
        ENV
    script:
        "../workflow/scripts/validate_inputs.py"


rule splits:
    input:
        data=DATA,
        manifest=f"{RESULTS}/inputs_manifest.json",
    output:
        splits=f"{RESULTS}/splits.tsv",
    log:
        f"{LOGS}/splits.log",
    conda:
        ENV
    script:
        "../workflow/scripts/splits.py"
