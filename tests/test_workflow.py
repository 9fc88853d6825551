"""The Snakemake workflow: lint, the paper grid's dry run, and the embedded default end to end."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from sdn.tracking import tracking_config

REPO = Path(__file__).resolve().parents[1]
PAPER_JOBS = {  # 4 archs x 3 data sets x 1 seed = 12 (data set, arch, seed) runs, backdoor on cifar10 vgg16bn
    "prepare_data": 3,
    "resolved_config": 1,
    "train": 38,  # 12 each of cnn, ic_only, sdn; bd_cnn and bd_ic_only
    "evaluate": 38,
    "early_exit": 24,
    "overthinking": 24,
    "confusion": 24,
    "calibration": 24,
    "gradcam": 12,
    "poison_data": 1,
    "backdoor_analysis": 1,
    "report": 1,
    "all": 1,
}


def job_counts(output: str) -> Counter[str]:
    """Parse the 'Job stats' table a dry run prints."""
    counts: Counter[str] = Counter()
    table = output.split("Job stats:", 1)[1]
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        if match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def planned_jobs(snakemake, workdir: Path, configfile: Path) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry run would execute."""
    done = snakemake(workdir, "-n", configfile=configfile)
    assert done.returncode == 0, done.stderr + done.stdout
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", done.stdout):
        header = re.match(r"(?:local)?rule (\w+):", block)
        if header:
            found = re.search(r"wildcards: (.*)", block)
            wildcards = dict(item.split("=", 1) for item in found.group(1).split(", ")) if found else {}
            jobs.append((header.group(1), wildcards))
    return jobs


def test_snakemake_lint_is_clean(snakemake, tmp_path: Path) -> None:
    done = snakemake(tmp_path, "--lint", configfile=REPO / "config" / "config.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Congratulations, your workflow is in a good condition" in done.stdout + done.stderr
    assert "Lints for" not in done.stdout + done.stderr


def test_paper_config_plans_the_full_grid(snakemake, tmp_path: Path) -> None:
    done = snakemake(tmp_path, "-n", "--quiet", "rules", configfile=REPO / "config" / "paper.yaml")
    assert done.returncode == 0, done.stderr
    assert job_counts(done.stdout + done.stderr) == Counter(PAPER_JOBS)


def test_paper_config_requests_one_gpu_per_training_job(snakemake, tmp_path: Path) -> None:
    done = snakemake(tmp_path, "-n", "--printshellcmds", configfile=REPO / "config" / "paper.yaml")
    assert done.returncode == 0, done.stderr
    blocks = re.split(r"\n(?=(?:local)?rule )", done.stdout)
    train_blocks = [b for b in blocks if b.startswith("rule train:") and "variant=sdn" in b]
    assert len(train_blocks) == 12
    assert all("gpu=1" in block for block in train_blocks)
    assert all("--device cuda" in block and "--epochs" not in block for block in train_blocks)
    assert all(
        'SDN_MLFLOW_TAGS="rule=train,' in block and "git_commit=${SDN_GIT_COMMIT}" in block for block in train_blocks
    )


def test_default_config_uses_short_schedules(snakemake, tmp_path: Path) -> None:
    done = snakemake(tmp_path, "-n", "--printshellcmds", configfile=REPO / "config" / "config.yaml")
    assert done.returncode == 0, done.stderr
    commands = re.findall(r"sdn train [^\n]*", done.stdout)
    assert len(commands) == 8  # 2 archs x (cnn, ic_only, sdn) + backdoored cnn + its IC-only SDN
    assert sum("--recipe ic_only" in c and "--epochs 3" in c for c in commands) == 3
    assert all("--device cpu" in c for c in commands)


def test_cifar10_jpeg_config_reads_the_local_imagefolder(snakemake, tmp_path: Path) -> None:
    done = snakemake(tmp_path, "-n", "--printshellcmds", configfile=REPO / "config" / "cifar10-jpeg.yaml")
    assert done.returncode == 0, done.stderr
    assert "sdn prepare-data --dataset imagefolder --data-root data/cifar10-jpeg --holdout 5000" in done.stdout
    assert "--url" not in done.stdout


def test_holdout_from_test_reaches_prepare_data(snakemake, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    text = (REPO / "config" / "config.yaml").read_text()
    config.write_text(text.replace("    holdout: 0.1\n", "    holdout: 0.1\n    holdout_from: test\n", 1))
    done = snakemake(tmp_path, "-n", "--printshellcmds", configfile=config)
    assert done.returncode == 0, done.stderr
    assert "--holdout 0.1 --holdout-from test" in done.stdout


@pytest.mark.slow
def test_default_workflow_end_to_end(snakemake, tmp_path: Path) -> None:
    config = REPO / "config" / "config.yaml"
    done = snakemake(tmp_path, "--profile", str(REPO / "workflow/profiles/default"), configfile=config, timeout=3600)
    assert done.returncode == 0, done.stderr[-6000:]
    results = tmp_path / "results"

    summary = results / "report" / "summary.md"
    assert summary.is_file() and len(summary.read_text()) > 500
    figures = list((results / "report").rglob("*.png"))
    assert figures, "the report holds no figure"
    assert all(figure.stat().st_size > 2000 for figure in figures)
    for variant in ("ic_only", "sdn"):
        base = results / "digits" / "resnet56" / "s0" / variant / "analysis"
        for name in (
            "early_exit/accuracy_vs_cost.png",
            "overthinking/overthinking.png",
            "confusion/confusion_hist.png",
            "calibration/reliability.png",
        ):
            assert (base / name).stat().st_size > 2000, name
    backdoor = json.loads((results / "digits/resnet56/s0/bd_ic_only/analysis/backdoor/summary.json").read_text())
    assert backdoor

    # the HTML report with captions
    html = snakemake(tmp_path, "--report", str(tmp_path / "report.html"), configfile=config)
    assert html.returncode == 0, html.stderr[-3000:]
    assert (tmp_path / "report.html").stat().st_size > 10_000

    # a second run does nothing
    again = snakemake(tmp_path, "-n", configfile=config)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    # deleting one checkpoint reruns exactly what depends on it
    (results / "digits" / "mobilenet" / "s0" / "cnn" / "model.pt").unlink()
    jobs = planned_jobs(snakemake, tmp_path, config)
    rules = Counter(rule for rule, _ in jobs)
    assert rules == Counter(
        {
            "train": 2,  # cnn and ic_only
            "evaluate": 2,  # cnn and ic_only outputs
            "early_exit": 2,  # both SDN variants mark the CNN's accuracy
            "overthinking": 1,
            "calibration": 1,
            "gradcam": 1,  # of the ic_only SDN
            "confusion": 2,  # both SDN variants compare with the CNN's confidence
            "report": 1,
            "all": 1,
        }
    )
    assert all(w.get("arch", "mobilenet") == "mobilenet" for _, w in jobs)

    # every job logged one MLflow run, tagged with rule, wildcards, workflow id and git commit
    check_mlflow_runs(results / "mlflow.db", expected_jobs=38)  # 40 jobs less `all` and `resolved_config`


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def check_mlflow_runs(store: Path, expected_jobs: int) -> None:
    """Start the real `mlflow server` on 127.0.0.1 against the store and find every run through its REST API."""
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            f"sqlite:///{store}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        for _ in range(240):
            try:
                experiments = _post(f"{base}/experiments/search", {"max_results": 100})
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("mlflow server did not answer within 120 s")
        ids = [e["experiment_id"] for e in experiments["experiments"]]
        runs = _post(f"{base}/runs/search", {"experiment_ids": ids, "max_results": 1000}).get("runs", [])
        tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
        assert len(runs) == expected_jobs, Counter(t.get("rule") for t in tags)
        assert len({t["workflow_id"] for t in tags}) == 1
        assert all(t.get("git_commit") for t in tags)
        trained = [t for t in tags if t.get("rule") == "train" and t.get("variant") == "cnn"]
        assert sorted(t["arch"] for t in trained) == ["mobilenet", "resnet56"]
        assert all(run["info"]["status"] == "FINISHED" for run in runs)
        # every trained SDN (IC-only and SDN training) is a registered model, its version logged by the early exit
        with urllib.request.urlopen(f"{base}/registered-models/search?max_results=100", timeout=30) as response:
            models = json.loads(response.read()).get("registered_models", [])
        expected = [
            f"sdn-digits-{arch}-{variant}" for arch in ("mobilenet", "resnet56") for variant in ("ic_only", "sdn")
        ]
        assert sorted(m["name"] for m in models) == expected
        early_exit_runs = {
            r["info"]["run_id"] for r, t in zip(runs, tags, strict=True) if t.get("rule") == "early_exit"
        }
        with urllib.request.urlopen(f"{base}/model-versions/search?max_results=100", timeout=30) as response:
            versions = json.loads(response.read()).get("model_versions", [])
        assert sorted(v["name"] for v in versions) == expected  # one version each
        assert {v["run_id"] for v in versions} <= early_exit_runs
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_jobs_carry_mlflow_tags_expanded_by_their_shell(snakemake, tmp_path: Path) -> None:
    done = snakemake(
        tmp_path,
        "-n",
        "--printshellcmds",
        configfile=REPO / "config" / "config.yaml",
        env={"SDN_WORKFLOW_ID": "wf-test-123"},
    )
    assert done.returncode == 0, done.stderr
    # the id is expanded by each job's shell from the inherited environment, never baked into the params
    # (which would make every new invocation rerun everything)
    assert "wf-test-123" not in done.stdout
    words = re.findall(r'SDN_MLFLOW_TAGS="[^"]*"', done.stdout)
    assert len(words) == 38  # every job but `all` and `resolved_config`
    train = next(w for w in words if "rule=train," in w and "variant=ic_only" in w and "mobilenet" in w)
    shell = f'SDN_WORKFLOW_ID=wf-1 SDN_GIT_COMMIT=abc; {train}; printf %s "$SDN_MLFLOW_TAGS"'
    expanded = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=True)
    assert tracking_config({"SDN_MLFLOW_TAGS": expanded.stdout}).tags == {
        "rule": "train",
        "dataset": "digits",
        "arch": "mobilenet",
        "seed": "0",
        "variant": "ic_only",
        "workflow_id": "wf-1",
        "git_commit": "abc",
    }
