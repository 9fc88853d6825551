# Shared settings, input functions and the final target list. Only definitions here, no rules.
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # the `sdn` package of this checkout: its registry names the architectures
from sdn.models import get_spec, list_archs

R = config["results"]
LOGS = config["logs"]
CONDA_ENV = "../envs/sdn.yaml"
THREADS = config["threads_per_job"]
GPUS = config["gpu_per_job"]
DATASETS = sorted(config["datasets"])
ARCHS = list(config["archs"])
SEEDS = [str(seed) for seed in config["seeds"]]
ANALYSES = ["early_exit", "overthinking", "confusion", "calibration"]
BACKDOOR = config["backdoor"]

# Every trained network: variant -> training recipe, training data, parent checkpoint (the CNN whose backbone an
# IC-only SDN freezes) and the data it is evaluated on. Adding a variant is one row here.
VARIANTS = {
    "cnn": {"recipe": "cnn", "data": "clean", "parent": None, "evaluate_on": "clean"},
    "ic_only": {"recipe": "ic_only", "data": "clean", "parent": "cnn", "evaluate_on": "clean"},
    "sdn": {"recipe": "sdn", "data": "clean", "parent": None, "evaluate_on": "clean"},
    "bd_cnn": {"recipe": "cnn", "data": "backdoor", "parent": None, "evaluate_on": "backdoor"},
    "bd_ic_only": {"recipe": "ic_only", "data": "clean", "parent": "bd_cnn", "evaluate_on": "backdoor"},
}
# Prepared data folders and the splits evaluated on each.
DATA = {"clean": f"{R}/data/{{dataset}}", "backdoor": f"{R}/data/{{dataset}}-backdoor"}
EVALUATED_SPLITS = {"clean": "holdout,test", "backdoor": "holdout,test,test_triggered,test_triggered_all"}
NATURAL_VARIANTS = [v for v, row in VARIANTS.items() if row["evaluate_on"] == "clean"]
BACKDOOR_VARIANTS = [v for v, row in VARIANTS.items() if row["evaluate_on"] == "backdoor"]
SDN_VARIANTS = [v for v in NATURAL_VARIANTS if VARIANTS[v]["recipe"] != "cnn"]  # the analysed ones
KNOWN_ARCHS = list_archs()
# torchvision/timm networks are named torchvision.<builder> / timm.<name> here (the name is a folder name);
# `weights:` maps such an arch to pretrained weights (a local state-dict file or a hub name): then its IC-only SDN
# converts the pretrained network directly (no CNN parent) and the cnn/sdn variants fine-tune from the weights.
EXTERNAL_ARCHS = [a for a in ARCHS if a not in KNOWN_ARCHS and a.partition(".")[0] in ("torchvision", "timm")]
WEIGHTS = dict(config.get("weights") or {})


def published_variants(found: set[str]) -> list[str]:
    """The natural variants of a published run the workflow takes: every one published (a grid publishes each job
    as it completes, so a CNN may stand alone for a while), but an SDN variant only beside its CNN, whose outputs
    its analyses compare with."""
    return [v for v in NATURAL_VARIANTS if v in found and (v not in SDN_VARIANTS or "cnn" in found)]


# Published mode (config key `published`: a folder of runs `<dataset>/<arch>/s<seed>/<variant>/`, e.g. reproduction):
# the published runs' meta.json, metrics.json, history.csv and outputs.npz are copied into the results layout
# (workflow/rules/published.smk) instead of training and evaluating; the runs are those found in the folder (the
# archs, seeds and datasets keys are not used for them; a run's variants not published yet are reported as not run,
# an SDN variant published without its CNN is left out), Grad-CAM (it needs a checkpoint) is skipped and the backdoor
# analysis runs when the folder holds the backdoor run's bd_cnn and bd_ic_only.
PUBLISHED = config.get("published")
if PUBLISHED:
    from sdn.reproduce.published import find_runs, no_runs_message

    PUBLISHED_RUNS = find_runs(PUBLISHED)
    if not PUBLISHED_RUNS:
        raise ValueError(f"config key published: {no_runs_message(PUBLISHED)}")
    for key, found in PUBLISHED_RUNS.items():
        taken = published_variants(found)
        where = f"{PUBLISHED}/{key[0]}/{key[1]}/s{key[2]}"
        if set(NATURAL_VARIANTS) - set(taken):
            missing = sorted(set(NATURAL_VARIANTS) - found)
            unanalysable = sorted((set(SDN_VARIANTS) & found) - set(taken))
            print(
                f"warning: {where} lacks {missing}: "
                + (f"reported with {taken} only" if taken else "left out")
                + (f" ({unanalysable} need the CNN's outputs)" if unanalysable else ""),
                file=sys.stderr,
            )


def run_dir(variant: str = "{variant}") -> str:
    """The folder of one trained network (wildcards dataset, arch, seed; variant given or a wildcard)."""
    return f"{R}/{{dataset}}/{{arch}}/s{{seed}}/{variant}"


RUN = run_dir()

# The schema checks that archs are names; the registry says which names exist.
CONFIGURED_ARCHS = [(f"['archs'][{i}]", a) for i, a in enumerate(ARCHS)]
CONFIGURED_ARCHS.append(("['backdoor']['arch']", BACKDOOR.get("arch")))
for key, arch in CONFIGURED_ARCHS:
    if arch in EXTERNAL_ARCHS:
        try:
            get_spec(arch)
        except (ValueError, ImportError) as error:
            raise ValueError(f"config{key}: {error}") from None
    elif arch not in (*KNOWN_ARCHS, None):
        raise ValueError(
            f"config{key}: {arch!r} is not one of {KNOWN_ARCHS} (registered in sdn.models: `sdn archs`), "
            "torchvision.<builder> or timm.<name>"
        )
for arch in WEIGHTS:
    if arch not in EXTERNAL_ARCHS:
        raise ValueError(f"config['weights']: {arch!r} is not a configured torchvision.<builder>/timm.<name> arch")
if BACKDOOR["enabled"] and BACKDOOR.get("dataset") not in config["datasets"]:
    raise ValueError(
        f"config key backdoor.dataset={BACKDOOR.get('dataset')!r} must name one of the configured datasets "
        f"{DATASETS} (or set backdoor.enabled: false)"
    )
if BACKDOOR["enabled"] and "arch" not in BACKDOOR:
    raise ValueError("config key backdoor.arch is required when backdoor.enabled is true")


wildcard_constraints:
    dataset="[a-z][a-z0-9_]*",
    arch="|".join(re.escape(a) for a in (*KNOWN_ARCHS, *EXTERNAL_ARCHS)),
    seed="[0-9]+",
    variant="|".join(VARIANTS),
    analysis="|".join(ANALYSES),


# --- the environment every job inherits -------------------------------------------------------------------
# The `sdn` command of the Python running Snakemake comes first on PATH, so rules work without an activated venv.
os.environ.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=workflow.basedir, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


# One id per `snakemake` invocation. Set once in the main process; jobs (local or SLURM, which re-parse this
# file) inherit the environment variable, so every job of one invocation carries the same id.
os.environ.setdefault("SDN_WORKFLOW_ID", uuid.uuid4().hex)
os.environ.setdefault("SDN_GIT_COMMIT", _git_commit())
# Jobs asking for `cuda` on a machine with several GPUs claim the least busy one through slot locks here
# (sdn.device); the `gpu` resource only bounds how many run at once.
os.environ.setdefault("SDN_GPU_LOCK_DIR", os.path.abspath(os.path.join(R, ".gpu-slots")))


def tracking_uri() -> str | None:
    """The MLflow store jobs log to: config tracking_uri, else $SDN_TRACKING_URI, else SQLite in results."""
    configured = config.get("tracking_uri")
    if configured == "off":
        return None
    if configured:
        return configured
    return os.environ.get("SDN_TRACKING_URI") or f"sqlite:///{os.path.join(R, 'mlflow.db')}"


if tracking_uri() is None:
    os.environ.update(SDN_TRACKING="off")
else:
    os.environ.update(SDN_TRACKING_URI=tracking_uri())


envvars:
    "SDN_WORKFLOW_ID",
    "SDN_GIT_COMMIT",


def init_tracking_store() -> None:
    """Create the MLflow store and experiment once, before jobs fan out (trouble is only a warning)."""
    if tracking_uri() is None:
        return
    Path(R).mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "sdn", "tracking-init", "--uri", tracking_uri()], capture_output=True, text=True
    )
    if done.returncode != 0:
        print(f"warning: sdn tracking-init failed: {done.stderr[-2000:]}", file=sys.stderr)


def job_env(rule_name: str):
    """Params function: `SDN_MLFLOW_TAGS="rule=...,dataset=...,workflow_id=${SDN_WORKFLOW_ID},..."`, the environment
    assignment that tags the job's MLflow run (key=value pairs: readable in the report's job parameters).

    The ${...} references are expanded by the job's shell, so the params stay the same from one invocation to the
    next and never trigger a rerun. (Snakemake itself sets OMP_NUM_THREADS and friends to the rule's threads.)
    """

    def build(wildcards) -> str:
        pairs = [("rule", rule_name), *wildcards.items()]
        pairs += [("workflow_id", "${SDN_WORKFLOW_ID}"), ("git_commit", "${SDN_GIT_COMMIT}")]
        return 'SDN_MLFLOW_TAGS="' + ",".join(f"{key}={value}" for key, value in pairs) + '"'

    return build


def _option(flag: str, value) -> list[str]:
    if value is None or value is False:
        return []
    if value is True:
        return [flag]
    if isinstance(value, list):
        return [flag, ",".join(str(item) for item in value)]
    return [flag, str(value)]


def _join(parts: list[str]) -> str:
    """Options as one shell word each (a data root or URL with a space stays one argument)."""
    return shlex.join(parts)


def device_options() -> str:
    return _join(
        _option("--device", config["device"]) + _option("--allow-cpu-fallback", config["allow_cpu_fallback"])
    )


def train_inputs(wildcards) -> dict[str, str]:
    """The prepared data a variant trains on (meta.json and the split files it reads, so a changed split reruns
    the training) and, for an IC-only SDN, its parent CNN's model.pt."""
    row = VARIANTS[wildcards.variant]
    data = DATA[row["data"]]
    inputs = {"data": f"{data}/meta.json", "train_split": f"{data}/train.pt", "holdout_split": f"{data}/holdout.pt"}
    if row["parent"] and not (row["recipe"] == "ic_only" and wildcards.arch in WEIGHTS):
        inputs["parent"] = f"{run_dir(row['parent'])}/model.pt"
    return {key: path.format(**wildcards) for key, path in inputs.items()}


def early_exit_inputs(wildcards) -> dict[str, str]:
    """The outputs analysed and the CNN's; with a checkpoint (not in published mode) also the model and its
    data's meta.json: the job packages the model as an MLflow model at the chosen threshold and registers it."""
    inputs = {"outputs": f"{RUN}/outputs.npz", "cnn": f"{run_dir('cnn')}/outputs.npz"}
    if not PUBLISHED:
        inputs |= {"model": f"{RUN}/model.pt", "data": f"{DATA['clean']}/meta.json"}
    return {name: path.format(**wildcards) for name, path in inputs.items()}


def evaluate_inputs(wildcards) -> dict[str, str]:
    """The model.pt of a variant and the prepared data it is evaluated on (meta.json and every evaluated split)."""
    on = VARIANTS[wildcards.variant]["evaluate_on"]
    inputs = {"model": f"{RUN}/model.pt", "data": f"{DATA[on]}/meta.json"}
    inputs.update({f"{split}_split": f"{DATA[on]}/{split}.pt" for split in EVALUATED_SPLITS[on].split(",")})
    return {key: path.format(**wildcards) for key, path in inputs.items()}


def prepare_options(wildcards) -> str:
    """`sdn prepare-data` options of one configured data set."""
    entry = config["datasets"][wildcards.dataset]
    root = entry.get("data_root") or config["data_root"]
    parts = ["--dataset", entry["source"], "--data-root", root]
    parts += _option("--holdout", entry.get("holdout"))
    if entry.get("holdout_from", "train") != "train":
        parts += ["--holdout-from", entry["holdout_from"]]
    parts += _option("--max-train", entry.get("max_train"))
    parts += _option("--max-test", entry.get("max_test"))
    parts += _option("--normalization", entry.get("normalization"))
    parts += _option("--url", entry.get("url"))
    parts += _option("--local-path", entry.get("local_path"))
    parts += _option("--image-size", entry.get("image_size"))
    parts += _option("--test-fraction", entry.get("test_fraction"))
    return _join(parts)


def model_options(kind: str, arch: str | None) -> list[str]:
    """--ic-input (where `arch` offers it), --alpha-mode and --ic-head (recipes with ICs) and --backbone-mode (ic_only),
    each only when it differs from the default, so that the default config's train commands stay as they were."""
    ic_input, alpha_mode, backbone_mode = config["ic_input"], config["alpha_mode"], config["backbone_mode"]
    ic_head = config["ic_head"]
    parts = []
    if ic_input != "post-relu" and arch is not None and ic_input in get_spec(arch).ic_inputs:
        parts += ["--ic-input", ic_input]
    if alpha_mode != "bounded" and kind != "cnn":
        parts += ["--alpha-mode", alpha_mode]
    if ic_head != "paper" and kind != "cnn":
        parts += ["--ic-head", ic_head]
    if backbone_mode != "eval" and kind == "ic_only":
        parts += ["--backbone-mode", backbone_mode]
    return parts


def train_options(kind: str, seed: int | str, arch: str | None = None) -> str:
    """`sdn train` options for one recipe kind: config overrides (null = paper default), device, engine, exits."""
    recipe = config["recipes"][kind]
    parts = ["--recipe", kind, "--seed", str(seed), "--engine", config["engine"], "--exits", config["exits"]]
    parts += model_options(kind, arch)
    parts += _option("--epochs", recipe.get("epochs"))
    parts += _option("--lr", recipe.get("lr"))
    parts += _option("--batch-size", recipe.get("batch_size"))
    parts += _option("--milestones", recipe.get("milestones"))
    parts += _option("--max-train-samples", recipe.get("max_train_samples"))
    parts += _option("--clip-grad-norm", recipe.get("clip_grad_norm"))
    parts += _option("--weights", WEIGHTS.get(arch))
    return f"{_join(parts)} {device_options()}"


def exit_rule_args() -> list[str]:
    """--fallback and --tolerance of the early-exit rule, shared by every command that simulates early exits."""
    settings = config["analyses"]["early_exit"]
    return _option("--fallback", settings["fallback"]) + _option("--tolerance", settings["tolerance"])


def exit_rule_options() -> str:
    return _join(exit_rule_args())


def early_exit_args() -> list[str]:
    settings = config["analyses"]["early_exit"]
    parts = _option("--policies", settings["policies"]) + _option("--budgets", settings["budgets"])
    return parts + exit_rule_args()


def backdoor_options() -> str:
    parts = _option("--target", BACKDOOR["target"]) + _option("--rate", BACKDOOR["rate"])
    parts += _option("--trigger-size", BACKDOOR["trigger_size"]) + _option("--trigger-x", BACKDOOR["trigger_x"])
    parts += _option("--trigger-y", BACKDOOR["trigger_y"]) + _option("--seed", BACKDOOR["seed"])
    return _join(parts)


def resolved_config() -> str:
    return json.dumps(config, sort_keys=True)


# --- the analyses of a run (workflow/rules/analyses.smk) --------------------------------------------------
def analysis_argv(analysis: str, wildcards) -> list[str]:
    """The `sdn` command line (after `sdn`) of one analysis of one run: the one definition used by the analysis's
    own rule and by the published-mode rule that runs all four."""
    run = RUN.format(**wildcards)
    outputs, cnn = f"{run}/outputs.npz", f"{run_dir('cnn').format(**wildcards)}/outputs.npz"
    out = f"{run}/analysis/{analysis}"
    if analysis == "early_exit":
        argv = ["early-exit", "--outputs", outputs, "--cnn-outputs", cnn, "--out", out]
        argv += early_exit_args()
        if not PUBLISHED:  # package the model at the chosen threshold (see early_exit_inputs)
            argv += ["--checkpoint", f"{run}/model.pt", "--data", DATA["clean"].format(**wildcards)]
        return argv
    if analysis == "overthinking":
        split = str(config["analyses"]["overthinking"]["split"])
        return ["overthinking", "--outputs", outputs, "--out", out, "--split", split]
    if analysis == "confusion":
        return ["confusion", "--outputs", outputs, "--cnn-outputs", cnn, "--out", out]
    if analysis == "calibration":
        return ["calibration", "--outputs", outputs, "--out", out, *exit_rule_args()]
    raise ValueError(f"unknown analysis {analysis!r}; known: {ANALYSES}")


def analysis_command(analysis: str):
    """Params function: the shell-quoted `sdn` command line of ``analysis`` for one run."""
    return lambda wildcards: shlex.join(analysis_argv(analysis, wildcards))


def all_analyses_commands(wildcards) -> str:
    """Params function: the four analyses of one run as `sdn batch` arguments, each with its job's MLflow tags."""
    lines = [f"{job_env(a)(wildcards)} {shlex.join(analysis_argv(a, wildcards))}" for a in ANALYSES]
    return " ".join(shlex.quote(line) for line in lines)  # batch expands the tags' ${...} itself


# analysis -> (its figure, the report caption file, the report category)
ANALYSIS_FIGURES = {
    "early_exit": ("accuracy_vs_cost.png", "early_exit.rst", "Early exits"),
    "overthinking": ("overthinking.png", "overthinking.rst", "Overthinking"),
    "confusion": ("confusion_hist.png", "confusion.rst", "Confusion"),
    "calibration": ("reliability.png", "calibration.rst", "Calibration"),
}


def analysis_summary(analysis: str) -> str:
    return f"{RUN}/analysis/{analysis}/summary.json"


def analysis_figure(analysis: str):
    figure, caption, category = ANALYSIS_FIGURES[analysis]
    return report(
        f"{RUN}/analysis/{analysis}/{figure}",
        caption=f"../report/{caption}",
        category=category,
        subcategory="{dataset} {arch} s{seed} {variant}",
    )


# --- target lists ---------------------------------------------------------------------------------------------
def _runs() -> list[tuple[str, str, str]]:
    if PUBLISHED:
        return sorted(k for k, found in PUBLISHED_RUNS.items() if published_variants(found))
    return [(d, a, s) for d in DATASETS for a in ARCHS for s in SEEDS]


def _variants(run: tuple[str, str, str]) -> list[str]:
    """The natural variants of one run the workflow reports: all of them, or in published mode those published."""
    return published_variants(PUBLISHED_RUNS[run]) if PUBLISHED else NATURAL_VARIANTS


def _in_run(dataset: str, arch: str, seed: str, variant: str, path: str) -> str:
    return f"{run_dir(variant)}/{path}".format(dataset=dataset, arch=arch, seed=seed)


def _backdoor_run() -> tuple[str, str, str]:
    return BACKDOOR["dataset"], BACKDOOR["arch"], str(BACKDOOR["seed"])


def analysis_targets() -> list[str]:
    """Every evaluation and analysis output of the natural (non-backdoor) experiments."""
    targets = []
    for run in _runs():
        variants = _variants(run)
        targets += [_in_run(*run, variant, "metrics.json") for variant in variants]
        for variant in (v for v in SDN_VARIANTS if v in variants):
            targets += [_in_run(*run, variant, f"analysis/{analysis}/summary.json") for analysis in ANALYSES]
        if config["analyses"]["gradcam"]["enabled"] and not PUBLISHED:
            targets.append(_in_run(*run, "ic_only", "analysis/gradcam/gradcam.png"))
    return targets


def backdoor_targets() -> list[str]:
    if not BACKDOOR["enabled"]:
        return []
    if PUBLISHED and not set(BACKDOOR_VARIANTS) <= PUBLISHED_RUNS.get(_backdoor_run(), set()):
        return []
    if PUBLISHED:  # the analysis takes the target from the config: it must be the one the run was poisoned with
        from sdn.reproduce.published import backdoor_config_mismatches

        dataset, arch, seed = _backdoor_run()
        run = f"{PUBLISHED}/{dataset}/{arch}/s{seed}/bd_cnn"
        mismatches = backdoor_config_mismatches(run, BACKDOOR)
        if mismatches:
            raise ValueError(
                f"config key backdoor differs from the poisoning of the published backdoor run {run} "
                f"(its provenance.json): {'; '.join(mismatches)}. Set those backdoor keys to the published values."
            )
    return [_in_run(*_backdoor_run(), "bd_ic_only", "analysis/backdoor/summary.json")]


def train_size_targets() -> list[str]:
    """Published mode: what the default held-out split costs, for every run whose CNN is also published trained on
    all training images (variant cnn_full of the runners, `sdn train-size`); none otherwise."""
    if not PUBLISHED:
        return []
    pairs = sorted(run for run, found in PUBLISHED_RUNS.items() if {"cnn", "cnn_full"} <= found)
    return [_in_run(*run, "cnn_full", "analysis/train_size/summary.json") for run in pairs]


def checkpoint_targets() -> list[str]:
    """Every model.pt. Listed as targets so that deleting one checkpoint retrains it (and, through the newer
    file, reruns exactly what depends on it); otherwise Snakemake ignores a missing intermediate file. None in published mode (no checkpoints)."""
    if PUBLISHED:
        return []
    targets = [_in_run(*run, variant, "model.pt") for run in _runs() for variant in NATURAL_VARIANTS]
    if BACKDOOR["enabled"]:
        targets += [_in_run(*_backdoor_run(), variant, "model.pt") for variant in BACKDOOR_VARIANTS]
    return targets


def all_targets() -> list[str]:
    return [os.path.join(R, "report", "summary.md"), *checkpoint_targets()]


# the report's landing text (published mode: no training, no checkpoints, no MLflow runs)
report: "../report/published.rst" if PUBLISHED else "../report/workflow.rst"


onstart:
    init_tracking_store()
