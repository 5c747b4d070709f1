from brainpipe.bids import BidsLayout
from brainpipe.compute import dask_resources
from brainpipe.features.extract import build_network_store, is_network_label
from brainpipe.features.pca import build_feature_store
from brainpipe.logs import log_to

features_cfg = snakemake.config.get("features", {})
label = snakemake.wildcards.features
with log_to(snakemake.log[0]), dask_resources(snakemake.threads, snakemake.resources.mem_mb):
    if is_network_label(features_cfg, label):
        build_network_store(
            label,
            BidsLayout(snakemake.params.root).stimuli_table,
            snakemake.input.splits,
            snakemake.output.features,
            features_cfg,
            threads=snakemake.threads,
            mem_mb=snakemake.resources.mem_mb,
            config=snakemake.config,
        )
    else:
        build_feature_store(
            label,
            BidsLayout(snakemake.params.root).stimuli_table,
            snakemake.input.splits,
            snakemake.output.features,
            n_components=snakemake.params.n_components,
            config=snakemake.config,
        )
