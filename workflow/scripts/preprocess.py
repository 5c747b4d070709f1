import json

from brainpipe.bids import BidsLayout, run_keys
from brainpipe.compute import dask_resources
from brainpipe.logs import log_to
from brainpipe.preprocess import preprocess_subject

with log_to(snakemake.log[0]), dask_resources(snakemake.threads, snakemake.resources.mem_mb):
    p = snakemake.params
    subject = snakemake.wildcards.subject
    with open(snakemake.input.manifest) as fh:
        manifest = json.load(fh)
    layout = BidsLayout(p.root, p.task)
    preprocess_subject(
        layout,
        subject,
        run_keys(subject, p.sessions, p.runs, layout),
        snakemake.output.preproc,
        config=snakemake.config,
        manifest=manifest,
        **p.options,
    )
