# The HTML report: figures a person would rather look at than read.


rule report:
    input:
        summary=f"{RESULTS}/summary.tsv",
    output:
        report=f"{RESULTS}/report.html",
    params:
        title=f"brainpipe: {DATASET}",
    log:
        f"{LOGS}/report.log",
    conda:
        ENV
    script:
        "../workflow/scripts/report.py"
