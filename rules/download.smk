# Get the dataset (for `synthetic`: generate it) and check it before any compute.


# A checkpoint: the raw files other rules depend on (input functions in common.smk) are
# listed once it has run.
checkpoint download:
    output:
        data=directory(DATA),
    params:
        dataset=DATASET,
        generator=config.get("synthetic_meeg" if MEEG else "synthetic", {}),
        registry=REGISTRY,
    log:
        f"{LOGS}/download.log",
    benchmark:
        f"{BENCH}/download.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/download.py"


# Two checks per subject (brainpipe.validation), split by what later stages read, so an
# edited file re-checks and reruns only its dependants; adding a subject checks only it.
# validate_inputs: BOLD runs, sidecars, brain mask and every sample (what preprocess reads).
rule validate_inputs:
    input:
        bold=raw("bold"),
        sidecars=raw("sidecar"),
        mask=raw("brain_mask"),
    output:
        manifest=f"{RESULTS}/sub-{{subject}}/inputs_manifest.json",
    params:
        root=DATA,
        sessions=config["sessions"],
        runs=config["runs"],
        tr=config["tr"],
        task=config["task"],
        parts=("runs",),
    log:
        f"{LOGS}/validate_inputs/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/validate_inputs/sub-{{subject}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/validate_inputs.py"



# validate_events: events tables and ROI masks (what betas reads besides preproc.zarr).
rule validate_events:
    input:
        events=raw("events"),
        masks=raw("masks"),
        bold=raw("bold"),  # run lengths, from the headers
        stimuli=raw("stimuli_table"),
    output:
        manifest=f"{RESULTS}/sub-{{subject}}/events_manifest.json",
    params:
        root=DATA,
        sessions=config["sessions"],
        runs=config["runs"],
        tr=config["tr"],
        task=config["task"],
        parts=("events",),
    log:
        f"{LOGS}/validate_events/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/validate_events/sub-{{subject}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/validate_inputs.py"


# The stimuli table and every image decoded once, before features or splits.
rule validate_stimuli:
    input:
        stimuli=raw("stimuli_table"),
        images=raw("stimulus_images"),
    output:
        manifest=f"{RESULTS}/stimuli_manifest.json",
    params:
        root=DATA,
    log:
        f"{LOGS}/validate_stimuli.log",
    benchmark:
        f"{BENCH}/validate_stimuli.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/validate_stimuli.py"
