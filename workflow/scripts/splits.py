from brainpipe.bids import BidsLayout
from brainpipe.logs import log_to
from brainpipe.splits import make_splits

with log_to(snakemake.log[0]):
    make_splits(
        BidsLayout(snakemake.params.root).stimuli_table,
        snakemake.output.splits,
        shared_train_fraction=snakemake.params.shared_train_fraction,
    )
