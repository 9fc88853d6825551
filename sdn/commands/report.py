"""``sdn report``: every table, figure and a paper-style summary.md from the files under a results folder."""

from __future__ import annotations

import argparse
import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path

NAME = "report"
HELP = "Gather all results into tables (CSV + Markdown), figures and summary.md; missing pieces show as not run."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, required=True, help="results folder (results/{dataset}/{arch}/...)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: RESULTS/report)")
    parser.add_argument("--config-json", type=Path, default=None, help="the workflow config as JSON (provenance)")


def run(args: argparse.Namespace) -> int:
    write_report(args.results, args.out or args.results / "report", config_json=args.config_json)
    return 0


def provenance_line(found_commits: list[str], config_json: Path | None) -> str:
    """Git commit of this code and of the checkpoints, generation date and the config used."""
    from sdn.checkpoint import git_commit

    parts = [
        f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by `sdn report`",
        f"code git commit {git_commit() or 'unknown'}",
    ]
    if found_commits:
        parts.append(f"checkpoints trained at commit(s) {', '.join(found_commits)}")
    if config_json is not None:
        digest = hashlib.sha256(config_json.read_bytes()).hexdigest()[:12]
        parts.append(f"config {config_json} (sha256 {digest}; a copy is report/config.json)")
    else:
        parts.append("config not given")
    return "_Provenance: " + "; ".join(parts) + "._"


TABLE_TITLES = {
    "status": "Runs found (status)",
    "per_exit_accuracy": "Per-exit test accuracy (%)",
    "early_exit": "Early exit: accuracy and cost",
    "overthinking": "Overthinking: wasteful and destructive",
    "confusion": "Confusion vs confidence",
    "calibration": "Calibration (ECE)",
    "backdoor": "Backdoor",
}


def write_report(results: Path, out_dir: Path, *, config_json: Path | None = None) -> Path:
    """Write tables/*.csv, tables/*.md, figures/* and summary.md into ``out_dir``; return summary.md's path."""
    from sdn.io import read_json, write_json, write_text
    from sdn.report.collect import collect
    from sdn.report.figures import write_figures
    from sdn.report.html import markdown_html, page, table_html
    from sdn.report.summary import TABLES, markdown_table, summary_markdown

    if config_json is not None and not config_json.is_file():
        raise FileNotFoundError(f"--config-json file not found: {config_json}")
    found = collect(results)
    tables = {name: build(found) for name, build in TABLES.items()}
    for name, table in tables.items():
        write_text(out_dir / "tables" / f"{name}.csv", table.to_csv(index=False))
        write_text(out_dir / "tables" / f"{name}.md", markdown_table(table))
        write_text(out_dir / "tables" / f"{name}.html", table_html(table, TABLE_TITLES.get(name, name)))
    figures = write_figures(found, out_dir / "figures")
    copy_config = config_json is not None and config_json.resolve() != (out_dir / "config.json").resolve()
    if copy_config:
        write_json(out_dir / "config.json", read_json(config_json))
    commits = sorted(
        {
            str(r.meta["git_commit"])
            for runs in found.variants.values()
            for r in runs.values()
            if r.meta and r.meta.get("git_commit")
        }
    )
    text = summary_markdown(
        found,
        tables,
        provenance=provenance_line(commits, config_json),
        figures=sorted(p.name for p in figures if p.suffix == ".png"),
    )
    from sdn.report.paper import paper_markdown

    paper = paper_markdown(found)
    write_text(out_dir / "paper_vs_ours.md", paper)
    summary = out_dir / "summary.md"
    write_text(summary, text + "\n" + paper)
    # Snakemake's report shows HTML inline (Markdown only as a download); figures there sit in their own categories
    write_text(out_dir / "summary.html", page("Summary", markdown_html(text + "\n" + paper)))
    log.info("report of %d run(s) written to %s (%d figure files)", len(found.keys), out_dir, len(figures))
    for problem in found.problems:
        log.warning("%s", problem)
    return summary
