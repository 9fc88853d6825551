# Prepared data: one uint8 tensor cache per data set (train / holdout / test splits + meta.json).


rule prepare_data:
    output:
        train=f"{DATA['clean']}/train.pt",
        holdout=f"{DATA['clean']}/holdout.pt",
        test=f"{DATA['clean']}/test.pt",
        meta=f"{DATA['clean']}/meta.json",
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
        "{params.env} sdn prepare-data {params.options} --out {params.out:q} > {log:q} 2>&1"
