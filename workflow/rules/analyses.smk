# Analyses of the cached per-exit logits (no model is run again), plus Grad-CAM on the IC-only SDN.


rule early_exit:
    input:
        unpack(early_exit_inputs),
    output:
        summary=f"{RUN}/analysis/early_exit/summary.json",
        figure=report(
            f"{RUN}/analysis/early_exit/accuracy_vs_cost.png",
            caption="../report/early_exit.rst",
            category="Early exits",
            subcategory="{dataset} {arch} s{seed} {variant}",
        ),
    log:
        f"{LOGS}/early_exit/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
    params:
        options=early_exit_options(),
        model=lambda wildcards, input: (
            f" --checkpoint {shlex.quote(input.model)} --data {shlex.quote(os.path.dirname(input.data))}"
            if "model" in input.keys()
            else ""
        ),
        out=lambda wildcards, output: os.path.dirname(output.summary),
        env=job_env("early_exit"),
    threads: 1
    resources:
        gpu=0,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn early-exit --outputs {input.outputs:q} --cnn-outputs {input.cnn:q} --out {params.out:q}"
        " {params.options}{params.model} > {log:q} 2>&1"


rule overthinking:
    input:
        outputs=f"{RUN}/outputs.npz",
    output:
        summary=f"{RUN}/analysis/overthinking/summary.json",
        figure=report(
            f"{RUN}/analysis/overthinking/overthinking.png",
            caption="../report/overthinking.rst",
            category="Overthinking",
            subcategory="{dataset} {arch} s{seed} {variant}",
        ),
    log:
        f"{LOGS}/overthinking/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
    params:
        split=config["analyses"]["overthinking"]["split"],
        out=lambda wildcards, output: os.path.dirname(output.summary),
        env=job_env("overthinking"),
    threads: 1
    resources:
        gpu=0,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn overthinking --outputs {input.outputs:q} --out {params.out:q} --split {params.split:q}"
        " > {log:q} 2>&1"


rule confusion:
    input:
        outputs=f"{RUN}/outputs.npz",
        cnn=f"{run_dir('cnn')}/outputs.npz",
    output:
        summary=f"{RUN}/analysis/confusion/summary.json",
        figure=report(
            f"{RUN}/analysis/confusion/confusion_hist.png",
            caption="../report/confusion.rst",
            category="Confusion",
            subcategory="{dataset} {arch} s{seed} {variant}",
        ),
    log:
        f"{LOGS}/confusion/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
    params:
        out=lambda wildcards, output: os.path.dirname(output.summary),
        env=job_env("confusion"),
    threads: 1
    resources:
        gpu=0,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn confusion --outputs {input.outputs:q} --cnn-outputs {input.cnn:q} --out {params.out:q}"
        " > {log:q} 2>&1"


rule calibration:
    input:
        outputs=f"{RUN}/outputs.npz",
    output:
        summary=f"{RUN}/analysis/calibration/summary.json",
        figure=report(
            f"{RUN}/analysis/calibration/reliability.png",
            caption="../report/calibration.rst",
            category="Calibration",
            subcategory="{dataset} {arch} s{seed} {variant}",
        ),
    log:
        f"{LOGS}/calibration/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
    params:
        out=lambda wildcards, output: os.path.dirname(output.summary),
        options=exit_rule_options(),
        env=job_env("calibration"),
    threads: 1
    resources:
        gpu=0,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn calibration --outputs {input.outputs:q} --out {params.out:q} {params.options} > {log:q} 2>&1"


rule gradcam:
    input:
        model=f"{RUN}/model.pt",
        outputs=f"{RUN}/outputs.npz",
        data=f"{DATA['clean']}/meta.json",
        test_split=f"{DATA['clean']}/test.pt",
    output:
        figure=report(
            f"{RUN}/analysis/gradcam/gradcam.png",
            caption="../report/gradcam.rst",
            category="Grad-CAM",
            subcategory="{dataset} {arch} s{seed} {variant}",
        ),
    log:
        f"{LOGS}/gradcam/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
    params:
        data=lambda wildcards, input: os.path.dirname(input.data),
        out=lambda wildcards, output: os.path.dirname(output.figure),
        max_samples=config["analyses"]["gradcam"]["max_samples"],
        env=job_env("gradcam"),
    threads: THREADS
    resources:
        gpu=0,
    conda:
        CONDA_ENV
    shell:
        "{params.env} sdn gradcam --checkpoint {input.model:q} --data {params.data:q} --outputs {input.outputs:q}"
        " --out {params.out:q} --max-samples {params.max_samples:q} --device cpu > {log:q} 2>&1"
