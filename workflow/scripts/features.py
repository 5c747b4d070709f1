from brainpipe.bids import BidsLayout
from brainpipe.compute import dask_resources
from brainpipe.features.pca import build_feature_store
from brainpipe.logs import log_to

with log_to(snakemake.log[0]), dask_resources(snakemake.threads, snakemake.resources.mem_mb):
    build_feature_store(
        snakemake.wildcards.features,
        BidsLayout(snakemake.params.root).stimuli_table,
        snakemake.input.splits,
        snakemake.output.features,
        n_components=snakemake.params.n_components,
        config=snakemake.config,
    )
