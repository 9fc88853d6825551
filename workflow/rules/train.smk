# Training: the CNN, the IC-only SDN built on it (frozen backbone), and the SDN trained from scratch.


rule train_cnn:
    input:
        data=f"{R}/data/{{dataset}}/meta.json",
    output:
        model=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/cnn/model.pt",
        meta=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/cnn/meta.json",
        history=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/cnn/history.csv",
    log:
        f"{LOGS}/train_cnn/{{dataset}}_{{arch}}_s{{seed}}.log",
    params:
        options=lambda wildcards: train_options("cnn", wildcards.seed),
        data=lambda wildcards, input: os.path.dirname(input.data),
        out=lambda wildcards, output: os.path.dirname(output.model),
        env=job_env("train_cnn"),
    threads: THREADS
    resources:
        gpu=GPUS,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn train --arch {wildcards.arch} --data {params.data} --out {params.out} {params.options}"
        " > {log} 2>&1"


rule train_ic_only:
    input:
        data=f"{R}/data/{{dataset}}/meta.json",
        parent=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/cnn/model.pt",
    output:
        model=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/ic_only/model.pt",
        meta=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/ic_only/meta.json",
        history=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/ic_only/history.csv",
    log:
        f"{LOGS}/train_ic_only/{{dataset}}_{{arch}}_s{{seed}}.log",
    params:
        options=lambda wildcards: train_options("ic_only", wildcards.seed),
        data=lambda wildcards, input: os.path.dirname(input.data),
        out=lambda wildcards, output: os.path.dirname(output.model),
        env=job_env("train_ic_only"),
    threads: THREADS
    resources:
        gpu=GPUS,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn train --arch {wildcards.arch} --data {params.data} --out {params.out}"
        " --parent {input.parent} {params.options} > {log} 2>&1"


rule train_sdn:
    input:
        data=f"{R}/data/{{dataset}}/meta.json",
    output:
        model=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/sdn/model.pt",
        meta=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/sdn/meta.json",
        history=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/sdn/history.csv",
    log:
        f"{LOGS}/train_sdn/{{dataset}}_{{arch}}_s{{seed}}.log",
    params:
        options=lambda wildcards: train_options("sdn", wildcards.seed),
        data=lambda wildcards, input: os.path.dirname(input.data),
        out=lambda wildcards, output: os.path.dirname(output.model),
        env=job_env("train_sdn"),
    threads: THREADS
    resources:
        gpu=GPUS,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn train --arch {wildcards.arch} --data {params.data} --out {params.out} {params.options}"
        " > {log} 2>&1"
