# The backdoor experiment (BadNets trigger): poisoned data, then (variants bd_cnn and bd_ic_only of the table in
# common.smk, trained and evaluated by the train and evaluate rules) per-exit accuracy and early exits on triggered
# inputs.


rule poison_data:
    input:
        clean=f"{DATA['clean']}/meta.json",
        splits=expand(f"{DATA['clean']}/{{split}}.pt", split=["train", "holdout", "test"], allow_missing=True),
    output:
        train=f"{DATA['backdoor']}/train.pt",
        holdout=f"{DATA['backdoor']}/holdout.pt",
        test=f"{DATA['backdoor']}/test.pt",
        triggered=f"{DATA['backdoor']}/test_triggered.pt",
        triggered_all=f"{DATA['backdoor']}/test_triggered_all.pt",
        meta=f"{DATA['backdoor']}/meta.json",
    log:
        f"{LOGS}/poison_data/{{dataset}}.log",
    params:
        clean=lambda wildcards, input: os.path.dirname(input.clean),
        out=lambda wildcards, output: os.path.dirname(output.meta),
        options=backdoor_options(),
        env=job_env("poison_data"),
    threads: 1
    resources:
        gpu=0,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn backdoor poison --data {params.clean:q} --out {params.out:q} {params.options} > {log:q} 2>&1"


rule backdoor_analysis:
    input:
        cnn=f"{run_dir('bd_cnn')}/outputs.npz",
        sdn=f"{run_dir('bd_ic_only')}/outputs.npz",
    output:
        summary=f"{run_dir('bd_ic_only')}/analysis/backdoor/summary.json",
        figure=report(
            f"{run_dir('bd_ic_only')}/analysis/backdoor/backdoor.png",
            caption="../report/backdoor.rst",
            category="Backdoor",
            subcategory="{dataset} {arch} s{seed}",
        ),
    log:
        f"{LOGS}/backdoor_analysis/{{dataset}}_{{arch}}_s{{seed}}.log",
    params:
        out=lambda wildcards, output: os.path.dirname(output.summary),
        target=BACKDOOR["target"],
        options=exit_rule_options(),
        env=job_env("backdoor_analysis"),
    threads: 1
    resources:
        gpu=0,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn backdoor analyze --cnn-outputs {input.cnn:q} --sdn-outputs {input.sdn:q} --out {params.out:q}"
        " --target {params.target:q} {params.options} > {log:q} 2>&1"
