from brainpipe.download import fetch_dataset
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    p = snakemake.params
    fetch_dataset(p.dataset, snakemake.output.data, p.generator, registry_dir=p.registry)
