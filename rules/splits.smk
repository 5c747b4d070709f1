# The train/test split of the stimuli (a table stimulus -> split), made once per dataset
# and an input to every fitting stage: test stimuli never enter anything fitted.


rule splits:
    input:
        stimuli=raw("stimuli_table"),
        checked=f"{RESULTS}/stimuli_manifest.json",
    output:
        splits=f"{RESULTS}/splits.tsv",
    params:
        root=DATA,
        # M/EEG: test concepts must stay unseen (zero-shot), so no test image moves to train
        shared_train_fraction=0.0 if MEEG else config["splits"]["shared_train_fraction"],
    log:
        f"{LOGS}/splits.log",
    benchmark:
        f"{BENCH}/splits.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/splits.py"
