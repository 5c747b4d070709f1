# Real datasets (registry: config/datasets/NAME.yaml): fetch them from their public home
# (resumable, verified, parallel; see brainpipe.remote) and, for datasets that ship betas
# (NSD, `betas: ingest`), turn those into betas.zarr and splits.tsv instead of estimating them
# (volume spaces or fsaverage). With `source.stream_betas` (default) `fetch` leaves NSD's
# session betas to `ingest_betas`, which converts each session as its bytes arrive.
# NSD with `betas: estimate` is fetched as BIDS from its preprocessed time series, and the
# ordinary preprocess/betas/splits rules take over.
# Only registry files are read while the DAG is built: `snakemake -n` touches no network.

# The dataset's own config checks (NSD: caption features need source.captions) ran when
# rules/common.smk looked up DATASET_ADAPTER.

if not DATASET_ADAPTER.generated:

    ruleorder: fetch > download

    rule fetch:
        output:
            data=directory(DATA),
        params:
            dataset=DATASET,
            subjects=config["subjects"],
            sessions=config["sessions"],
            # runs/task matter only for NSD time series (source.betas: estimate)
            runs=[] if INGEST_BETAS else config["runs"],
            task=config["task"],
            source=config.get("source", {}),
            registry=REGISTRY,
        threads: config["source"]["workers"]  # parallel transfers (schema default)
        resources:
            mem_mb=per_attempt(2000),
        log:
            f"{LOGS}/fetch.log",
        benchmark:
            f"{BENCH}/fetch.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/fetch.py"


if INGEST_BETAS:

    ruleorder: ingest_splits > splits
    ruleorder: ingest_betas > betas

    rule ingest_splits:
        input:
            data=DATA,
        output:
            splits=f"{RESULTS}/splits.tsv",
        params:
            dataset=DATASET,
            subjects=config["subjects"],
            sessions=config["sessions"],
            registry=REGISTRY,
        log:
            f"{LOGS}/ingest_splits.log",
        benchmark:
            f"{BENCH}/ingest_splits.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/ingest_splits.py"

    rule ingest_betas:
        input:
            data=DATA,
            splits=f"{RESULTS}/splits.tsv",
        output:
            betas=directory(f"{RESULTS}/sub-{{subject}}/betas.zarr"),
        params:
            dataset=DATASET,
            sessions=config["sessions"],
            source=config.get("source", {}),
            voxel_chunk=config["betas"]["voxel_chunk"],
            registry=REGISTRY,
        # with source.stream_betas (default) this job downloads its sessions, source.workers
        # at once (schema default); MD5 and the gathering run beside the network reads
        threads: config["source"]["workers"]
        resources:
            mem_mb=per_attempt(3000),  # z-scored or read from files: one session of kept voxels as int16
        log:
            f"{LOGS}/ingest_betas/sub-{{subject}}.log",
        benchmark:
            f"{BENCH}/ingest_betas/sub-{{subject}}.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/ingest_betas.py"
