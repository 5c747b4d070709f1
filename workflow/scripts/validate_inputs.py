import json

from brainpipe.logs import log_to
from brainpipe.storage import write_text_atomic
from brainpipe.validation import validate_subject

with log_to(snakemake.log[0]):
    p = snakemake.params
    manifest = validate_subject(
        snakemake.input.data, snakemake.wildcards.subject, p.sessions, p.runs, p.tr, task=p.task
    )
    write_text_atomic(json.dumps(manifest, indent=2), snakemake.output.manifest)
