from brainpipe.logs import log_to
from brainpipe.validation import validate_subject, write_manifest

with log_to(snakemake.log[0]):
    p = snakemake.params
    manifest = validate_subject(
        p.root, snakemake.wildcards.subject, p.sessions, p.runs, p.tr, task=p.task, parts=p.parts
    )
    write_manifest(manifest, snakemake.output.manifest)
