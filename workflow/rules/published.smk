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
