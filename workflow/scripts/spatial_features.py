from brainpipe.bids import BidsLayout
from brainpipe.features.spatial import build_spatial_feature_store
from brainpipe.logs import log_to

with log_to(snakemake.log[0]):
    build_spatial_feature_store(
        snakemake.wildcards.features,
        BidsLayout(snakemake.params.root).stimuli_table,
        snakemake.input.splits,
        snakemake.output.features,
        config=snakemake.config,
    )
