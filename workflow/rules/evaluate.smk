# Evaluation: one pass over the held-out and test splits (and the triggered test split of the backdoor variants)
# caches every exit's logits (outputs.npz).


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        outputs=f"{RUN}/outputs.npz",
        metrics=f"{RUN}/metrics.json",
    log:
        f"{LOGS}/evaluate/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
    params:
        data=lambda wildcards, input: os.path.dirname(input.data),
        splits=lambda wildcards: EVALUATED_SPLITS[VARIANTS[wildcards.variant]["evaluate_on"]],
        device=device_options(),
        env=job_env("evaluate"),
    threads: THREADS
    resources:
        gpu=GPUS,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn evaluate --checkpoint {input.model:q} --data {params.data:q} --out {output.outputs:q}"
        " --splits {params.splits:q} {params.device} > {log:q} 2>&1"
