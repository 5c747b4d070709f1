# Generation from decoded latents (config `generate`): an image generator fitted on the
# training stimuli (or loaded from `generate.weights`), then one job per subject x ROI that
# decodes its latents from the betas and generates the test images (brainpipe.generate).
# With `generate.diffusion`, a second stage: CLIP embeddings of the stimuli and a diffusion
# UNet conditioned on them (fitted on training stimuli or loaded from
# `generate.diffusion.weights`); each job also decodes the embeddings and generates from
# them. Published weights come from the cache the `weights` rule fills and verifies.


rule generator:
    input:
        stimuli=raw("stimuli_table"),
        images=raw("stimulus_images"),
        splits=f"{RESULTS}/splits.tsv",
        manifests=generate_weight_manifests("generatevae"),
    output:
        weights=directory(f"{RESULTS}/generate/autoencoder"),
        latents=directory(f"{RESULTS}/generate/latents.zarr"),
    params:
        root=DATA,
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=60,
        gpu=GENERATE["gpu"],
    benchmark:
        f"{BENCH}/generate/generator.tsv"
    log:
        f"{LOGS}/generate/generator.log",
    conda:
        ENV
    script:
        "../workflow/scripts/generator.py"


rule diffusion_generator:
    input:
        latents=f"{RESULTS}/generate/latents.zarr",
        weights=f"{RESULTS}/generate/autoencoder",
        manifests=generate_weight_manifests("generateunet", "generatenet"),
    output:
        unet=directory(f"{RESULTS}/generate/diffusion"),
        embeddings=directory(f"{RESULTS}/generate/embeddings.zarr"),
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=60,
        gpu=GENERATE["gpu"],
    benchmark:
        f"{BENCH}/generate/diffusion_generator.tsv"
    log:
        f"{LOGS}/generate/diffusion_generator.log",
    conda:
        ENV
    script:
        "../workflow/scripts/diffusion_generator.py"


rule generate:
    input:
        betas=f"{RESULTS}/sub-{{subject}}/betas.zarr",
        splits=f"{RESULTS}/splits.tsv",
        latents=f"{RESULTS}/generate/latents.zarr",
        weights=f"{RESULTS}/generate/autoencoder",
        diffusion=generate_diffusion_inputs("diffusion"),
        embeddings=generate_diffusion_inputs("embeddings.zarr"),
        manifests=generate_weight_manifests("generatenet"),
    output:
        store=directory(f"{RESULTS}/generate/sub-{{subject}}/{{roi}}/reconstructions.zarr"),
        metrics=f"{RESULTS}/generate/sub-{{subject}}/{{roi}}/metrics.json",
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=30,
        gpu=GENERATE["gpu"],
    benchmark:
        f"{BENCH}/generate/sub-{{subject}}_{{roi}}.tsv"
    log:
        f"{LOGS}/generate/sub-{{subject}}_{{roi}}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/generate.py"


rule generate_scores:
    input:
        metrics=generate_metric_files(),
    output:
        table=f"{RESULTS}/generate/metrics.tsv",
    resources:
        mem_mb=1000,
        runtime=5,
    benchmark:
        f"{BENCH}/generate/metrics.tsv"
    log:
        f"{LOGS}/generate/metrics.log",
    conda:
        ENV
    script:
        "../workflow/scripts/generate_scores.py"


# Brain captioning (config `generate.captions`, brainpipe.generate.caption_jobs): a caption
# decoder trained on the training stimuli's (embedding, caption) pairs; one job per
# subject x ROI captions the decoder's predicted embeddings of the test stimuli; one
# scoring job (METEOR, CIDEr against the shuffled-reference baseline) for all of them.


rule captioner:
    input:
        stimuli=raw("stimuli_table"),
        features=f"{RESULTS}/features/{CAPTIONS['features']}.zarr",
        splits=f"{RESULTS}/splits.tsv",
        weights=caption_weights_input,
    output:
        captioner=directory(f"{RESULTS}/generate/captions/captioner"),
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=60,
        gpu=CAPTIONS["gpu"],
    benchmark:
        f"{BENCH}/generate/captioner.tsv"
    log:
        f"{LOGS}/generate/captioner.log",
    conda:
        ENV
    script:
        "../workflow/scripts/captioner.py"


rule caption:
    input:
        predictions=f"{RESULTS}/models/sub-{{subject}}/{{roi}}/{CAPTIONS['decoder']}-{CAPTIONS['features']}/predictions.zarr",
        features=f"{RESULTS}/features/{CAPTIONS['features']}.zarr",
        stimuli=raw("stimuli_table"),
        splits=f"{RESULTS}/splits.tsv",
        captioner=f"{RESULTS}/generate/captions/captioner",
    output:
        captions=f"{RESULTS}/generate/captions/sub-{{subject}}/{{roi}}/captions.tsv",
    threads: 1
    resources:
        mem_mb=per_attempt(3000),
        runtime=30,
        gpu=CAPTIONS["gpu"],
    benchmark:
        f"{BENCH}/generate/captions_sub-{{subject}}_{{roi}}.tsv"
    log:
        f"{LOGS}/generate/captions_sub-{{subject}}_{{roi}}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/caption.py"


rule caption_scores:
    input:
        captions=caption_files(),
    output:
        table=f"{RESULTS}/generate/captions/scores.tsv",
    resources:
        mem_mb=3000,  # the METEOR jar runs with -Xmx2G
        runtime=15,
    benchmark:
        f"{BENCH}/generate/caption_scores.tsv"
    log:
        f"{LOGS}/generate/caption_scores.log",
    conda:
        ENV
    script:
        "../workflow/scripts/caption_scores.py"
