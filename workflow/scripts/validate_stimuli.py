from brainpipe.logs import log_to
from brainpipe.validation import validate_stimuli, write_manifest

with log_to(snakemake.log[0]):
    write_manifest(validate_stimuli(snakemake.params.root), snakemake.output.manifest)
