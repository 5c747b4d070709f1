from brainpipe.datasets.nsd import EXPDESIGN_KEY, make_nsd_splits
from brainpipe.logs import log_to
from brainpipe.remote import safe_local_path

with log_to(snakemake.log[0]):
    make_nsd_splits(
        safe_local_path(snakemake.input.data, EXPDESIGN_KEY),
        snakemake.params.subjects,
        snakemake.params.sessions,
        snakemake.output.splits,
    )
