from brainpipe.bids import BidsLayout
from brainpipe.features.spatial import (
    build_spatial_feature_store,
    build_spatial_store_from_network,
)
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    table = BidsLayout(snakemake.params.root).stimuli_table
    if snakemake.input.network:  # a configured network's token layer
        build_spatial_store_from_network(
            snakemake.wildcards.features,
            snakemake.input.network[0],
            table,
            snakemake.input.splits,
            snakemake.output.features,
            config=snakemake.config,
        )
    else:
        build_spatial_feature_store(
            snakemake.wildcards.features,
            table,
            snakemake.input.splits,
            snakemake.output.features,
            config=snakemake.config,
        )
