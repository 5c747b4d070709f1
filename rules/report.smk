# The HTML report: figures a person would rather look at than read. Its figures also go
# to report_figures/, which `snakemake --report` bundles with each one's provenance.


rule report:
    input:
        summary=f"{RESULTS}/summary.tsv",
        scores=[f"{d}/scores.zarr" for d in model_dirs()],
        betas=expand(f"{RESULTS}/sub-{{subject}}/betas.zarr", subject=config["subjects"]),
        data=DATA,
        align_scores=f"{RESULTS}/align/crosssubject.tsv" if align_stores() else [],
        align_encoding=f"{RESULTS}/align/encoding.tsv" if align_encoding_features() else [],
        align_decoding=f"{RESULTS}/align/decoding.tsv" if align_decoding_features() else [],
        reconstructions=[
            f.replace("metrics.json", "reconstructions.zarr") for f in generate_metric_files()
        ],
        timeseries_scores=(
            f"{RESULTS}/timeseries/matching.tsv" if timeseries_enabled(config) else []
        ),
    output:
        report=f"{RESULTS}/report.html",
        figures=report(
            directory(f"{RESULTS}/report_figures"),
            patterns=["{name}.png"],
            caption="../workflow/report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    params:
        title=f"brainpipe: {DATASET}",
        subjects=config["subjects"],
        recipe=config.get("recipe"),
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/report.py"
