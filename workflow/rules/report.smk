# The report: every figure and table of the run, and summary.md written like the paper's results section.


rule resolved_config:
    output:
        config=f"{R}/report/config.json",
    log:
        f"{LOGS}/resolved_config.log",
    params:
        resolved=resolved_config(),
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "printf '%s\\n' {params.resolved:q} > {output.config:q} 2> {log:q}"


rule report:
    input:
        config=f"{R}/report/config.json",
        analyses=analysis_targets(),
        backdoor=backdoor_targets(),
        train_size=train_size_targets(),
    output:
        # Snakemake's viewer shows HTML inline; summary.md stays a plain file. The analysis figures are registered by
        # the jobs that draw them, so only the figures made here (per-exit accuracy) are added.
        summary=f"{R}/report/summary.md",
        summary_html=report(f"{R}/report/summary.html", caption="../report/summary.rst", category="Summary"),
        figures=report(
            directory(f"{R}/report/figures"),
            patterns=["{name}_per_exit_accuracy.png"],
            caption="../report/figures.rst",
            category="Per-exit accuracy",
        ),
        tables=report(
            directory(f"{R}/report/tables"),
            patterns=["{name}.html"],
            caption="../report/tables.rst",
            category="Tables",
        ),
    log:
        f"{LOGS}/report.log",
    params:
        results=lambda wildcards: R,
        out=lambda wildcards, output: os.path.dirname(output.summary),
        env=job_env("report"),
    threads: 1
    resources:
        gpu=0,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn report --results {params.results:q} --out {params.out:q} --config-json {input.config:q}"
        " > {log:q} 2>&1"
