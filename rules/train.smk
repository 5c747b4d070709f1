# Model zoo training: one job per subject × ROI × model × feature model, plus one
# leave-one-subject-out pretraining job per ROI for cross-subject models.


rule pretrain:
    input:
        betas=expand(f"{RESULTS}/sub-{{subject}}/betas.zarr", subject=config["subjects"]),
        features=train_feature_inputs,
        splits=f"{RESULTS}/splits.tsv",
    output:
        weights=expand(
            f"{RESULTS}/models/shared/{{{{roi}}}}/{{{{model}}}}-{{{{features}}}}/pretrained-without-{{subject}}.safetensors",
            subject=config["subjects"],
        ),
    params:
        subjects=config["subjects"],
    threads: model_resource("threads")
    resources:
        mem_mb=pretrain_mem_mb,
        runtime=model_resource("runtime"),
        gpu=model_gpu,
    log:
        f"{LOGS}/train/shared_{{roi}}_{{model}}-{{features}}.log",
    benchmark:
        f"{BENCH}/train/shared_{{roi}}_{{model}}-{{features}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/pretrain.py"


rule train:
    input:
        betas=f"{RESULTS}/sub-{{subject}}/betas.zarr",
        features=train_feature_inputs,
        splits=f"{RESULTS}/splits.tsv",
        pretrained=pretrained_input,
    output:
        weights=f"{RESULTS}/models/sub-{{subject}}/{{roi}}/{{model}}-{{features}}/weights.safetensors",
        predictions=directory(
            f"{RESULTS}/models/sub-{{subject}}/{{roi}}/{{model}}-{{features}}/predictions.zarr"
        ),
    threads: model_resource("threads")
    resources:
        mem_mb=model_mem_mb,
        runtime=model_resource("runtime"),
        gpu=model_gpu,
    log:
        f"{LOGS}/train/sub-{{subject}}_{{roi}}_{{model}}-{{features}}.log",
    benchmark:
        f"{BENCH}/train/sub-{{subject}}_{{roi}}_{{model}}-{{features}}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/train.py"
