# Training: one rule for every variant of the table in common.smk (the CNN, the IC-only SDN built on it with a
# frozen backbone, the SDN trained from scratch, and the backdoor experiment's CNN and IC-only SDN).


rule train:
    input:
        unpack(train_inputs),
    output:
        model=f"{RUN}/model.pt",
        meta=f"{RUN}/meta.json",
        history=f"{RUN}/history.csv",
    log:
        f"{LOGS}/train/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
    params:
        options=lambda wildcards: train_options(
            VARIANTS[wildcards.variant]["recipe"], wildcards.seed, wildcards.arch
        ),
        data=lambda wildcards, input: os.path.dirname(input.data),
        parent=lambda wildcards, input: f" --parent {shlex.quote(input.parent)}" if "parent" in input.keys() else "",
        out=lambda wildcards, output: os.path.dirname(output.model),
        env=job_env("train"),
    threads: THREADS
    resources:
        gpu=GPUS,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn train --arch {wildcards.arch:q} --data {params.data:q} --out {params.out:q}{params.parent}"
        " {params.options} > {log:q} 2>&1"
