# The backdoor experiment (BadNets trigger): backdoored CNN -> IC-only SDN trained on clean data -> evaluation
# on the triggered test set -> per-exit accuracy and early exits on triggered inputs.


wildcard_constraints:
    bd_variant="bd_cnn|bd_ic_only",


rule poison_data:
    input:
        clean=f"{R}/data/{{dataset}}/meta.json",
    output:
        train=f"{R}/data/{{dataset}}-backdoor/train.pt",
        holdout=f"{R}/data/{{dataset}}-backdoor/holdout.pt",
        test=f"{R}/data/{{dataset}}-backdoor/test.pt",
        triggered=f"{R}/data/{{dataset}}-backdoor/test_triggered.pt",
        meta=f"{R}/data/{{dataset}}-backdoor/meta.json",
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
        "{params.env} sdn backdoor poison --data {params.clean} --out {params.out} {params.options} > {log} 2>&1"


rule train_bd_cnn:
    input:
        data=f"{R}/data/{{dataset}}-backdoor/meta.json",
    output:
        model=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/bd_cnn/model.pt",
        meta=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/bd_cnn/meta.json",
        history=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/bd_cnn/history.csv",
    log:
        f"{LOGS}/train_bd_cnn/{{dataset}}_{{arch}}_s{{seed}}.log",
    params:
        options=lambda wildcards: train_options("cnn", wildcards.seed),
        data=lambda wildcards, input: os.path.dirname(input.data),
        out=lambda wildcards, output: os.path.dirname(output.model),
        env=job_env("train_bd_cnn"),
    threads: THREADS
    resources:
        gpu=GPUS,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn train --arch {wildcards.arch} --data {params.data} --out {params.out} {params.options}"
        " > {log} 2>&1"


rule train_bd_ic_only:
    input:
        data=f"{R}/data/{{dataset}}/meta.json",
        parent=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/bd_cnn/model.pt",
    output:
        model=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/bd_ic_only/model.pt",
        meta=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/bd_ic_only/meta.json",
        history=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/bd_ic_only/history.csv",
    log:
        f"{LOGS}/train_bd_ic_only/{{dataset}}_{{arch}}_s{{seed}}.log",
    params:
        options=lambda wildcards: train_options("ic_only", wildcards.seed),
        data=lambda wildcards, input: os.path.dirname(input.data),
        out=lambda wildcards, output: os.path.dirname(output.model),
        env=job_env("train_bd_ic_only"),
    threads: THREADS
    resources:
        gpu=GPUS,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn train --arch {wildcards.arch} --data {params.data} --out {params.out}"
        " --parent {input.parent} {params.options} > {log} 2>&1"


rule evaluate_backdoor:
    input:
        model=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/{{bd_variant}}/model.pt",
        data=f"{R}/data/{{dataset}}-backdoor/meta.json",
    output:
        outputs=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/{{bd_variant}}/outputs.npz",
        metrics=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/{{bd_variant}}/metrics.json",
    log:
        f"{LOGS}/evaluate_backdoor/{{dataset}}_{{arch}}_s{{seed}}_{{bd_variant}}.log",
    params:
        data=lambda wildcards, input: os.path.dirname(input.data),
        splits="holdout,test,test_triggered",
        device=device_options(),
        env=job_env("evaluate_backdoor"),
    threads: THREADS
    resources:
        gpu=GPUS,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn evaluate --checkpoint {input.model} --data {params.data} --out {output.outputs}"
        " --splits {params.splits} {params.device} > {log} 2>&1"


rule backdoor_analysis:
    input:
        cnn=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/bd_cnn/outputs.npz",
        sdn=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/bd_ic_only/outputs.npz",
    output:
        summary=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/bd_ic_only/analysis/backdoor/summary.json",
        figure=report(
            f"{R}/{{dataset}}/{{arch}}/s{{seed}}/bd_ic_only/analysis/backdoor/backdoor.png",
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
        "{params.env} sdn backdoor analyze --cnn-outputs {input.cnn} --sdn-outputs {input.sdn} --out {params.out}"
        " --target {params.target} {params.options} > {log} 2>&1"
