"""Generation from decoded latents: images from brain responses (Brain-Diffuser's first
stage, MindEye's low-level path). :mod:`.autoencoder` is the generator (diffusers'
AutoencoderKL), :mod:`.metrics` the papers' reconstruction metrics, :mod:`.jobs` the
workflow's jobs (``rules/generate.smk``)."""
