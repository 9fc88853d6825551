# Evaluation: one pass over the held-out and test splits caches every exit's logits (outputs.npz).


rule evaluate:
    input:
        model=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/{{variant}}/model.pt",
        data=f"{R}/data/{{dataset}}/meta.json",
    output:
        outputs=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/{{variant}}/outputs.npz",
        metrics=f"{R}/{{dataset}}/{{arch}}/s{{seed}}/{{variant}}/metrics.json",
    log:
        f"{LOGS}/evaluate/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
    params:
        data=lambda wildcards, input: os.path.dirname(input.data),
        splits="holdout,test",
        device=device_options(),
        env=job_env("evaluate"),
    threads: THREADS
    resources:
        gpu=GPUS,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn evaluate --checkpoint {input.model} --data {params.data} --out {output.outputs}"
        " --splits {params.splits} {params.device} > {log} 2>&1"
