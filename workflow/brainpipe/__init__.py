"""brainpipe: multi-subject brain datasets to encoding and decoding models, with Snakemake."""

__version__ = "0.1.0"
