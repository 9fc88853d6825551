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
    output:
        summary=report(f"{R}/report/summary.md", caption="../report/summary.rst", category="Summary"),
        figures=report(
            directory(f"{R}/report/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Summary",
        ),
        tables=directory(f"{R}/report/tables"),
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
