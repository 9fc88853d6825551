# Analyses of the cached per-exit logits (no model is run again), plus Grad-CAM on the IC-only SDN.
# Each of the four analyses of a run (ANALYSES) is one job; in published mode (`make paper-report`: a few hundred
# of them, each mostly Python start-up and imports) one job runs all four of a run in one process (`sdn batch`).


if PUBLISHED:

    rule analyses:
        input:
            outputs=f"{RUN}/outputs.npz",
            cnn=f"{run_dir('cnn')}/outputs.npz",
        output:
            **{f"{a}_summary": analysis_summary(a) for a in ANALYSES},
            **{f"{a}_figure": analysis_figure(a) for a in ANALYSES},
        log:
            f"{LOGS}/analyses/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
        params:
            commands=all_analyses_commands,
        threads: 1
        resources:
            gpu=0,
        conda:
            CONDA_ENV
        shell:
            "sdn batch {params.commands} > {log:q} 2>&1"

else:

    rule early_exit:
        input:
            unpack(early_exit_inputs),
        output:
            summary=analysis_summary("early_exit"),
            figure=analysis_figure("early_exit"),
        log:
            f"{LOGS}/early_exit/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
        params:
            command=analysis_command("early_exit"),
            env=job_env("early_exit"),
        threads: 1
        resources:
            gpu=0,
        conda:
            CONDA_ENV
        shell:
            "{params.env} sdn {params.command} > {log:q} 2>&1"

    rule overthinking:
        input:
            outputs=f"{RUN}/outputs.npz",
        output:
            summary=analysis_summary("overthinking"),
            figure=analysis_figure("overthinking"),
        log:
            f"{LOGS}/overthinking/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
        params:
            command=analysis_command("overthinking"),
            env=job_env("overthinking"),
        threads: 1
        resources:
            gpu=0,
        conda:
            CONDA_ENV
        shell:
            "{params.env} sdn {params.command} > {log:q} 2>&1"

    rule confusion:
        input:
            outputs=f"{RUN}/outputs.npz",
            cnn=f"{run_dir('cnn')}/outputs.npz",
        output:
            summary=analysis_summary("confusion"),
            figure=analysis_figure("confusion"),
        log:
            f"{LOGS}/confusion/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
        params:
            command=analysis_command("confusion"),
            env=job_env("confusion"),
        threads: 1
        resources:
            gpu=0,
        conda:
            CONDA_ENV
        shell:
            "{params.env} sdn {params.command} > {log:q} 2>&1"

    rule calibration:
        input:
            outputs=f"{RUN}/outputs.npz",
        output:
            summary=analysis_summary("calibration"),
            figure=analysis_figure("calibration"),
        log:
            f"{LOGS}/calibration/{{dataset}}_{{arch}}_s{{seed}}_{{variant}}.log",
        params:
            command=analysis_command("calibration"),
            env=job_env("calibration"),
        threads: 1
        resources:
            gpu=0,
        conda:
            CONDA_ENV
        shell:
            "{params.env} sdn {params.command} > {log:q} 2>&1"


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
