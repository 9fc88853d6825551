# Published mode (config key `published`): each published run's files become the trained and evaluated network's
# files in the results layout, in place of the train and evaluate rules (not included in this mode); every analysis,
# table and figure follows from them. outputs.npz stays in its compact form (sdn.outputs.load expands it).


def published_inputs(wildcards) -> dict[str, str]:
    folder = f"{PUBLISHED}/{wildcards.dataset}/{wildcards.arch}/s{wildcards.seed}/{wildcards.variant}"
    return {name: f"{folder}/{name}.{suffix}" for name, suffix in PUBLISHED_FILES.items()}


PUBLISHED_FILES = {"meta": "json", "metrics": "json", "history": "csv", "outputs": "npz"}


rule published_run:
    input:
        unpack(published_inputs),
    output:
        **{name: f"{RUN}/{name}.{suffix}" for name, suffix in PUBLISHED_FILES.items()},
    log:
        f"{LOGS}/published_run/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
    threads: 1
    resources:
        gpu=0,
    shell:
        "(cp {input.meta:q} {output.meta:q} && cp {input.metrics:q} {output.metrics:q}"
        " && cp {input.history:q} {output.history:q} && cp {input.outputs:q} {output.outputs:q}) > {log:q} 2>&1"


rule train_size:
    """The default CNN against the one trained on all training images (cnn_full), on the test images both hold."""
    input:
        cnn=lambda w: [f"{PUBLISHED}/{w.dataset}/{w.arch}/s{w.seed}/cnn/{name}" for name in ("meta.json", "outputs.npz")],
        full=lambda w: [
            f"{PUBLISHED}/{w.dataset}/{w.arch}/s{w.seed}/cnn_full/{name}" for name in ("meta.json", "outputs.npz")
        ],
    output:
        summary=f"{run_dir('cnn_full')}/analysis/train_size/summary.json",
    log:
        f"{LOGS}/train_size/{{dataset}}_{{arch}}_s{{seed}}.log",
    params:
        cnn=lambda wildcards, input: os.path.dirname(input.cnn[0]),
        full=lambda wildcards, input: os.path.dirname(input.full[0]),
        out=lambda wildcards, output: os.path.dirname(output.summary),
        env=job_env("train_size"),
    threads: 1
    resources:
        gpu=0,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn train-size --cnn {params.cnn:q} --full {params.full:q} --out {params.out:q} > {log:q} 2>&1"
