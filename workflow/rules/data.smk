# Prepared data: one uint8 tensor cache per data set (train / holdout / test splits + meta.json).


rule prepare_data:
    output:
        train=f"{R}/data/{{dataset}}/train.pt",
        holdout=f"{R}/data/{{dataset}}/holdout.pt",
        test=f"{R}/data/{{dataset}}/test.pt",
        meta=f"{R}/data/{{dataset}}/meta.json",
    log:
        f"{LOGS}/prepare_data/{{dataset}}.log",
    params:
        options=prepare_options,
        out=lambda wildcards, output: os.path.dirname(output.meta),
        env=job_env("prepare_data"),
    threads: THREADS
    resources:
        gpu=0,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn prepare-data {params.options} --out {params.out} > {log} 2>&1"
