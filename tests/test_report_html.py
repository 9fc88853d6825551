"""The Snakemake report shows the summary and every table as HTML (not a download), in headless Chromium too."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sdn.report.html import markdown_html, table_html

REPO = Path(__file__).resolve().parents[1]


def test_markdown_tables_and_headings_become_html() -> None:
    text = "# Results\n\nSome **bold** `code`.\n\n| arch | top-1 |\n|---|---:|\n| resnet56 | 91.2 |\n\n"
    text += "- [a.png](figures/a.png)\n"
    body = markdown_html(text)
    assert "<h1>Results</h1>" in body and "<strong>bold</strong>" in body and "<code>code</code>" in body
    assert "<th>arch</th>" in body and "<td>resnet56</td><td>91.2</td>" in body and "---" not in body
    assert '<a href="figures/a.png">a.png</a>' in body
    assert markdown_html("_Provenance: final_test_accuracy_") == "<p><em>Provenance: final_test_accuracy</em></p>"
    assert "<script>" not in markdown_html("<script>alert(1)</script>")
    page = table_html(pd.DataFrame({"arch": ["vgg16"], "ece": [None]}), "Calibration")
    assert "<h1>Calibration</h1>" in page and "<td>vgg16</td>" in page and "<td>—</td>" in page


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def dump_dom(browser: str, page: Path) -> str:
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom",
         page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def embedded_html(report: str) -> list[str]:
    """The HTML results embedded in Snakemake's report (data URIs)."""
    found = []
    for data in re.findall(r"data:text/html;[^,\"']*base64,([A-Za-z0-9+/=]+)", report):
        found.append(base64.b64decode(data).decode("utf-8", "replace"))
    return found


@pytest.mark.slow
def test_report_of_a_tiny_workflow_shows_tables_as_html(snakemake, tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["archs"] = ["mobilenet"]
    config["tracking_uri"] = "off"
    config["analyses"]["gradcam"]["enabled"] = False
    config["backdoor"]["enabled"] = False
    for recipe in config["recipes"].values():
        recipe.update(epochs=1, milestones=None, max_train_samples=256)
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    done = snakemake(tmp_path, "--cores", "2", configfile=configfile, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    tables = sorted((tmp_path / "results" / "report" / "tables").glob("*.html"))
    assert {t.stem for t in tables} >= {"status", "per_exit_accuracy", "early_exit", "calibration"}

    report = tmp_path / "report.html"
    done = snakemake(tmp_path, "--report", str(report), configfile=configfile, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    pages = embedded_html(text)
    summary = next((p for p in pages if "<h1>Summary</h1>" in p or "Per-exit" in p), None)
    assert summary is not None and "<table>" in summary and "mobilenet" in summary
    assert any("<h1>Per-exit test accuracy (%)</h1>" in p for p in pages)
    assert "each figure below" not in text.lower()

    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): the rendered check needs it")
    landing = dump_dom(browser, report)
    for category in ("Summary", "Tables", "Per-exit accuracy", "Early exits"):
        assert category in landing, category
    shown = tmp_path / "summary_from_report.html"
    shown.write_text(summary)
    rendered = dump_dom(browser, shown)
    assert "<table>" in rendered and "mobilenet" in rendered
