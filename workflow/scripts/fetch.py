from brainpipe.download import fetch_dataset
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    fetch_dataset(
        snakemake.params.dataset,
        snakemake.output.data,
        subjects=snakemake.params.subjects,
        sessions=snakemake.params.sessions,
        # source.workers is the job's threads (as granted: --cores may scale them down)
        source={**snakemake.params.source, "workers": snakemake.threads},
        runs=snakemake.params.runs,
        task=snakemake.params.task,
        registry_dir=snakemake.params.registry,
    )
