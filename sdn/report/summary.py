"""Report tables (pandas, written as CSV and Markdown) and the summary.md text, from a :class:`Collection`.

Units in every table: accuracies and shares in percent, costs as percent of the CNN's cost, AUROC in [0, 1].
Missing inputs show as empty cells (CSV) or "—" (Markdown), and the status table says what was not run.
About 500 lines: every table is a short function of the Collection, kept together with the text that cites them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from sdn.config import PAPER_EPOCHS
from sdn.outputs import exit_names
from sdn.report.collect import ANALYSES, VARIANTS, Collection, RunKey, VariantResult
from sdn.report.labels import VARIANT_NAMES

ACCURACY_VARIANTS = ("cnn", "ic_only", "sdn")
MAIN_POLICY, MAIN_RULE = "confidence", "tolerance"
KEY_COLUMNS = ["dataset", "arch", "seed"]
MISSING = "—"
PRECISE_COLUMNS = ("auroc", "ece", "confusion_mean", "threshold")
PRECISE_DIGITS = 3


# ------------------------------------------------------------------------------------------------ small helpers


def _num(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, None, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _pct(value: Any) -> float | None:
    number = _num(value)
    return None if number is None else 100.0 * number


def dig(doc: Any, *path: Any) -> Any:
    """``doc[p0][p1]...`` or None where any step is missing."""
    for step in path:
        try:
            doc = doc[step]
        except (KeyError, IndexError, TypeError):
            return None
    return doc


def _key_cols(key: RunKey) -> dict[str, Any]:
    return {"dataset": key.dataset, "arch": key.arch, "seed": key.seed}


def fmt(value: Any, digits: int = 1) -> str:
    """Markdown cell text: numbers rounded, None/NaN as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, digits: int = 1) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (no index); AUROC, ECE, z-score and threshold columns get
    three decimals, everything else ``digits``."""
    if frame.empty:
        return "_nothing to show (not run)_\n"
    places = [PRECISE_DIGITS if any(tag in str(c) for tag in PRECISE_COLUMNS) else digits for c in frame.columns]
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = [
        "| " + " | ".join(fmt(v, d) for v, d in zip(row, places, strict=True)) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows]) + "\n"


def _with_variant(found: Collection, variants: Iterable[str]) -> Iterable[tuple[RunKey, str, VariantResult]]:
    for key in found.keys:
        for variant in variants:
            result = found.get(key, variant)
            if result is not None:
                yield key, variant, result


# ------------------------------------------------------------------------------------------------------ tables


def status_table(found: Collection) -> pd.DataFrame:
    """One row per run and variant: which pieces exist ("ok") and which were not run."""
    rows = []
    for key in found.keys:
        for variant in VARIANTS:
            result = found.get(key, variant)
            row = {**_key_cols(key), "variant": variant}
            row["model"] = "ok" if result is not None and result.meta is not None else "not run"
            row["metrics"] = "ok" if result is not None and result.metrics is not None else "not run"
            for name in ANALYSES:
                row[name] = "ok" if found.analysis(key, variant, name) is not None else "not run"
            rows.append(row)
        if key in found.backdoor or any(found.get(key, v) for v in ("bd_cnn", "bd_ic_only")):
            rows.append(
                {**_key_cols(key), "variant": "backdoor", "metrics": "ok" if found.backdoor.get(key) else "not run"}
            )
    return pd.DataFrame(rows, columns=[*KEY_COLUMNS, "variant", "model", "metrics", *ANALYSES])


def accuracy_table(found: Collection, split: str = "test") -> pd.DataFrame:
    """Long table: per-exit top-1/top-5 (percent) of every variant from metrics.json."""
    rows = []
    for key, variant, result in _with_variant(found, VARIANTS):
        top1 = result.top1(split)
        if top1 is None:
            continue
        top5 = dig(result.metrics, "splits", split, "top5") or [None] * len(top1)
        for e, (name, acc) in enumerate(zip(exit_names(len(top1)), top1, strict=True)):
            rows.append(
                {
                    **_key_cols(key),
                    "variant": variant,
                    "exit": e,
                    "exit_name": name,
                    "top1": acc,
                    "top5": _num(top5[e]) if e < len(top5) else None,
                }
            )
    return pd.DataFrame(rows, columns=[*KEY_COLUMNS, "variant", "exit", "exit_name", "top1", "top5"])


def accuracy_wide(found: Collection, key: RunKey, split: str = "test") -> pd.DataFrame:
    """The paper's layout for one network and data set: rows CNN / IC-only / SDN training, columns the exits."""
    tops = {v: r.top1(split) for v in ACCURACY_VARIANTS if (r := found.get(key, v)) is not None}
    num_exits = max((len(t) for t in tops.values() if t), default=1)
    names = exit_names(num_exits)
    rows = []
    for variant in ACCURACY_VARIANTS:
        top1 = tops.get(variant)
        cells: list[Any] = [None] * num_exits
        if top1:
            cells[num_exits - len(top1) :] = top1  # a CNN's single exit is the final column
        rows.append([VARIANT_NAMES[variant], *cells] if top1 else [f"{VARIANT_NAMES[variant]} (not run)", *cells])
    return pd.DataFrame(rows, columns=["training", *names])


def early_exit_table(found: Collection) -> pd.DataFrame:
    """Every chosen threshold of every policy and rule, with the CNN's test accuracy for reference."""
    rows = []
    for key, variant, _ in _with_variant(found, VARIANTS):
        doc = found.analysis(key, variant, "early_exit")
        if doc is None:
            continue
        cnn = found.get(key, "bd_cnn" if variant.startswith("bd_") else "cnn")
        cnn_top1 = cnn.top1() if cnn is not None else None
        for policy, rules in (doc.get("policies") or {}).items():
            for rule, entry in (rules or {}).items():
                rows.append(
                    {
                        **_key_cols(key),
                        "variant": variant,
                        "policy": policy,
                        "rule": rule,
                        "status": entry.get("status"),
                        "threshold": _num(entry.get("threshold")),
                        "test_accuracy": _num(entry.get("test_accuracy")),
                        "test_cost_pct": _pct(entry.get("test_cost_fraction")),
                        "reduction_pct": _num(entry.get("test_reduction_percent")),
                        "final_test_accuracy": _num(doc.get("final_test_accuracy")),
                        "cnn_test_accuracy": cnn_top1[-1] if cnn_top1 else None,
                    }
                )
    columns = [
        *KEY_COLUMNS,
        "variant",
        "policy",
        "rule",
        "status",
        "threshold",
        "test_accuracy",
        "test_cost_pct",
        "reduction_pct",
        "final_test_accuracy",
        "cnn_test_accuracy",
    ]
    return pd.DataFrame(rows, columns=columns)


def overthinking_table(found: Collection) -> pd.DataFrame:
    """Wasteful share, oracle cost and destructive share of errors per variant (percent)."""
    rows = []
    for key, variant, _ in _with_variant(found, VARIANTS):
        doc = found.analysis(key, variant, "overthinking")
        if doc is None:
            continue
        rows.append(
            {
                **_key_cols(key),
                "variant": variant,
                "split": doc.get("split"),
                "final_accuracy": _pct(doc.get("final_accuracy")),
                "early_correct_pct": _pct(doc.get("early_correct_share")),
                "never_correct_pct": _pct(doc.get("never_correct_share")),
                "oracle_cost_pct": _pct(doc.get("oracle_cost_fraction")),
                "oracle_cost_nominal_pct": _pct(doc.get("oracle_cost_fraction_nominal")),
                "final_errors": doc.get("final_errors"),
                "destructive_count": doc.get("destructive_count"),
                "destructive_pct_of_errors": _pct(doc.get("destructive_share_of_errors")),
            }
        )
    columns = [
        *KEY_COLUMNS,
        "variant",
        "split",
        "final_accuracy",
        "early_correct_pct",
        "never_correct_pct",
        "oracle_cost_pct",
        "oracle_cost_nominal_pct",
        "final_errors",
        "destructive_count",
        "destructive_pct_of_errors",
    ]
    return pd.DataFrame(rows, columns=columns)


def confusion_table(found: Collection) -> pd.DataFrame:
    """Normalised confusion of correct vs wrong samples, the original's counts, and our AUROCs."""
    fields = [
        "confusion_mean_correct",
        "confusion_mean_wrong",
        "auroc_confusion",
        "auroc_confidence",
        "auroc_cnn_confidence",
        "correct_with_confusion_above_mean_wrong",
        "wrong_with_confusion_below_mean_correct",
        "num_correct",
        "num_wrong",
    ]
    rows = []
    for key, variant, _ in _with_variant(found, VARIANTS):
        doc = found.analysis(key, variant, "confusion")
        if doc is None:
            continue
        rows.append(
            {**_key_cols(key), "variant": variant, "split": doc.get("split"), **{f: doc.get(f) for f in fields}}
        )
    return pd.DataFrame(rows, columns=[*KEY_COLUMNS, "variant", "split", *fields])


def calibration_table(found: Collection) -> pd.DataFrame:
    """Expected calibration error of the final head, the best exit, and the early-exit answers."""
    rows = []
    for key, variant, _ in _with_variant(found, VARIANTS):
        doc = found.analysis(key, variant, "calibration")
        if doc is None:
            continue
        eces = [_num(v) for v in doc.get("per_exit_ece") or []]
        known = [v for v in eces if v is not None]
        rows.append(
            {
                **_key_cols(key),
                "variant": variant,
                "final_ece": eces[-1] if eces else None,
                "min_exit_ece": min(known) if known else None,
                "early_exit_ece": _num(dig(doc, "early_exit", "ece")),
                "early_exit_accuracy": _num(dig(doc, "early_exit", "accuracy")),
            }
        )
    columns = [*KEY_COLUMNS, "variant", "final_ece", "min_exit_ece", "early_exit_ece", "early_exit_accuracy"]
    return pd.DataFrame(rows, columns=columns)


def backdoor_table(found: Collection) -> pd.DataFrame:
    """Backdoored CNN vs its IC-only SDN with early exits, on clean and triggered test inputs.

    The backdoor summary already holds percentages (docs/internals.md); only its cost fraction is scaled.
    """
    rows = []
    for key in found.keys:
        doc = found.backdoor.get(key)
        if doc is None:
            continue
        rows.append(
            {
                **_key_cols(key),
                "target": doc.get("target"),
                "cnn_clean_accuracy": _num(dig(doc, "cnn", "clean_accuracy")),
                "cnn_triggered_accuracy": _num(dig(doc, "cnn", "triggered_accuracy")),
                "cnn_attack_success": _num(dig(doc, "cnn", "attack_success")),
                "sdn_final_triggered_accuracy": _num(dig(doc, "sdn_final", "triggered_accuracy")),
                "early_exit_clean_accuracy": _num(dig(doc, "early_exit", "clean", "accuracy")),
                "early_exit_triggered_accuracy": _num(dig(doc, "early_exit", "triggered", "accuracy")),
                "early_exit_attack_success": _num(dig(doc, "early_exit", "triggered", "attack_success")),
                "early_exit_triggered_cost_pct": _pct(dig(doc, "early_exit", "triggered", "cost_fraction")),
                "cnn_triggered_all_accuracy": _num(dig(doc, "triggered_all", "cnn_accuracy")),
                "early_exit_triggered_all_accuracy": _num(dig(doc, "triggered_all", "early_exit", "accuracy")),
                "threshold": _num(dig(doc, "early_exit", "threshold")),
            }
        )
    columns = [
        *KEY_COLUMNS,
        "target",
        "cnn_clean_accuracy",
        "cnn_triggered_accuracy",
        "cnn_attack_success",
        "sdn_final_triggered_accuracy",
        "early_exit_clean_accuracy",
        "early_exit_triggered_accuracy",
        "early_exit_attack_success",
        "early_exit_triggered_cost_pct",
        "cnn_triggered_all_accuracy",
        "early_exit_triggered_all_accuracy",
        "threshold",
    ]
    return pd.DataFrame(rows, columns=columns)


TABLES: dict[str, Callable[[Collection], pd.DataFrame]] = {
    "status": status_table,
    "per_exit_accuracy": accuracy_table,
    "early_exit": early_exit_table,
    "overthinking": overthinking_table,
    "confusion": confusion_table,
    "calibration": calibration_table,
    "backdoor": backdoor_table,
}


# ---------------------------------------------------------------------------------------------- summary text


def _run_label(key: RunKey) -> str:
    return f"{key.arch} on {key.dataset} (seed {key.seed})"


def _main_choice(doc: dict[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
    """The confidence/tolerance choice of an early-exit summary, else the first successful one."""
    policies = doc.get("policies") or {}
    entry = dig(policies, MAIN_POLICY, MAIN_RULE)
    if isinstance(entry, dict) and entry.get("status") == "ok":
        return MAIN_POLICY, MAIN_RULE, entry
    for policy, rules in policies.items():
        for rule, entry in (rules or {}).items():
            if isinstance(entry, dict) and entry.get("status") == "ok":
                return policy, rule, entry
    return None


def accuracy_paragraph(found: Collection, key: RunKey) -> str:
    parts = []
    cnn = found.get(key, "cnn")
    cnn_top1 = cnn.top1() if cnn is not None else None
    parts.append(
        f"the CNN reaches {fmt(cnn_top1[-1])}% test top-1" if cnn_top1 else "the CNN's evaluation was not run"
    )
    for variant in ("ic_only", "sdn"):
        result = found.get(key, variant)
        top1 = result.top1() if result is not None else None
        if not top1:
            parts.append(f"{VARIANT_NAMES[variant]} was not run")
            continue
        best = max(range(len(top1) - 1), key=lambda e: top1[e]) if len(top1) > 1 else None
        text = (
            f"{VARIANT_NAMES[variant]} reaches {fmt(top1[0])}% at its first IC and {fmt(top1[-1])}% at the final head"
        )
        if best is not None:
            text += f" (best IC: IC{best + 1} with {fmt(top1[best])}%)"
        parts.append(text)
    return f"On {_run_label(key)}, " + "; ".join(parts) + "."


def early_exit_paragraph(found: Collection, key: RunKey, variant: str) -> str | None:
    doc = found.analysis(key, variant, "early_exit")
    if doc is None:
        return None
    choice = _main_choice(doc)
    if choice is None:
        return f"{VARIANT_NAMES[variant]} of {_run_label(key)}: no early-exit threshold met its rule."
    policy, rule, entry = choice
    cnn = found.get(key, "cnn")
    cnn_top1 = cnn.top1() if cnn is not None else None
    cnn_text = f"; the CNN reaches {fmt(cnn_top1[-1])}% at 100%" if cnn_top1 else ""
    threshold = fmt(_num(entry.get("threshold")), 3)
    return (
        f"{VARIANT_NAMES[variant]} of {_run_label(key)} with {policy} early exits reaches "
        f"{fmt(_num(entry.get('test_accuracy')))}% at {fmt(_pct(entry.get('test_cost_fraction')))}% "
        "of the CNN's cost "
        f"(a {fmt(_num(entry.get('test_reduction_percent')))}% reduction; threshold {threshold}, chosen on "
        f"{doc.get('split_choose', 'holdout')} by the {rule} rule){cnn_text}."
    )


def overthinking_paragraph(found: Collection, key: RunKey, variant: str) -> str | None:
    doc = found.analysis(key, variant, "overthinking")
    if doc is None:
        return None
    share = doc.get("destructive_share_of_errors")
    destructive = (
        "the final head makes no error, so the destructive share is undefined"
        if share is None
        else f"{fmt(_pct(share))}% of the final head's {doc.get('final_errors')} errors are destructive "
        f"(some IC had them right)"
    )
    nominal = _pct(doc.get("oracle_cost_fraction_nominal"))
    nominal_text = f" ({fmt(nominal)}% with the original's nominal IC costs)" if nominal is not None else ""
    return (
        f"{VARIANT_NAMES[variant]} of {_run_label(key)}: {fmt(_pct(doc.get('early_correct_share')))}% of "
        f"{doc.get('split', 'test')} samples are already right at some IC before the final head (wasteful effect); "
        "an oracle stopping each at its earliest correct exit would pay "
        f"{fmt(_pct(doc.get('oracle_cost_fraction')))}% "
        f"of the CNN's cost{nominal_text}; {destructive}."
    )


def confusion_paragraph(found: Collection, key: RunKey, variant: str) -> str | None:
    doc = found.analysis(key, variant, "confusion")
    if doc is None:
        return None
    cnn_auroc = doc.get("auroc_cnn_confidence")
    cnn_text = f", and {fmt(_num(cnn_auroc), 3)} for the CNN's confidence" if "auroc_cnn_confidence" in doc else ""
    return (
        f"{VARIANT_NAMES[variant]} of {_run_label(key)}: normalised confusion averages "
        f"{fmt(_num(doc.get('confusion_mean_wrong')), 2)} on misclassified vs "
        f"{fmt(_num(doc.get('confusion_mean_correct')), 2)} on correct samples. As a misclassification detector "
        f"(AUROC, our addition) confusion scores {fmt(_num(doc.get('auroc_confusion')), 3)} against "
        f"{fmt(_num(doc.get('auroc_confidence')), 3)} for the final head's confidence{cnn_text}."
    )


def calibration_paragraph(found: Collection, key: RunKey, variant: str) -> str | None:
    doc = found.analysis(key, variant, "calibration")
    if doc is None:
        return None
    eces = [_num(v) for v in doc.get("per_exit_ece") or []]
    return (
        f"{VARIANT_NAMES[variant]} of {_run_label(key)}: expected calibration error "
        f"{fmt(eces[-1] if eces else None, 3)} at the final head and "
        f"{fmt(_num(dig(doc, 'early_exit', 'ece')), 3)} for the early-exit answers."
    )


def backdoor_paragraph(found: Collection, key: RunKey) -> str | None:
    doc = found.backdoor.get(key)
    if doc is None:
        return None
    everything = dig(doc, "triggered_all")
    all_text = (
        " Over all triggered test images (target class included): CNN "
        f"{fmt(_num(dig(everything, 'cnn_accuracy')))}%, early exits "
        f"{fmt(_num(dig(everything, 'early_exit', 'accuracy')))}% (table columns `*_triggered_all_*`)."
        if everything
        else " (Triggered accuracy over all triggered test images, target class included: not evaluated.)"
    )
    return (
        f"Backdoor on {_run_label(key)}: the backdoored CNN reaches {fmt(_num(dig(doc, 'cnn', 'clean_accuracy')))}% "
        f"on clean and {fmt(_num(dig(doc, 'cnn', 'triggered_accuracy')))}% on triggered test inputs not of the "
        "target class (attack success "
        f"{fmt(_num(dig(doc, 'cnn', 'attack_success')))}%); with IC-only early exits the triggered accuracy is "
        f"{fmt(_num(dig(doc, 'early_exit', 'triggered', 'accuracy')))}% (attack success "
        f"{fmt(_num(dig(doc, 'early_exit', 'triggered', 'attack_success')))}%, cost "
        f"{fmt(_pct(dig(doc, 'early_exit', 'triggered', 'cost_fraction')))}% of the CNN's)." + all_text
    )


def _section(title: str, paragraphs: list[str], table: pd.DataFrame | None, table_note: str = "") -> list[str]:
    lines = [f"## {title}", ""]
    for paragraph in paragraphs:
        lines += [paragraph, ""]
    if table is None or table.empty:
        return lines if paragraphs else [*lines, "Not run.", ""]
    if table_note:
        lines += [table_note, ""]
    return [*lines, markdown_table(table)]


def schedule_note(found: Collection) -> str | None:
    """A warning naming every trained network whose schedule is shorter than the paper's, or None."""
    short = []
    for key in found.keys:
        for variant in VARIANTS:
            result = found.get(key, variant)
            recipe = dig(result.meta, "recipe") if result is not None and result.meta else None
            if not isinstance(recipe, dict):
                continue
            epochs, paper = recipe.get("epochs"), PAPER_EPOCHS.get(str(recipe.get("kind")))
            if isinstance(epochs, int) and paper is not None and epochs < paper:
                short.append(
                    f"{VARIANT_NAMES.get(variant, variant)} of {_run_label(key)}: {epochs} of {paper} epochs"
                )
    if not short:
        return None
    return (
        "**Short schedules.** These networks were trained for fewer epochs than the paper's recipe, so their "
        "accuracies (and everything computed from them) are not the paper's numbers; an under-trained CNN in "
        "particular can sit far below an SDN whose ICs' losses help a short schedule: " + "; ".join(short) + "."
    )


def summary_markdown(
    found: Collection, tables: dict[str, pd.DataFrame], *, provenance: str, figures: list[str]
) -> str:
    """The report's summary.md: short paragraphs with this run's numbers, then the tables."""
    keys = found.keys
    variants = [v for v in VARIANTS if v in ("ic_only", "sdn")]
    lines = ["# Shallow-Deep Networks: results of this run", "", provenance, ""]
    if note := schedule_note(found):
        lines += [note, ""]
    if not keys:
        lines += ["No results were found: nothing has been run yet.", ""]
    acc = [accuracy_paragraph(found, k) for k in keys if any(found.get(k, v) for v in ACCURACY_VARIANTS)]
    lines += _section("Internal classifiers (paper §3)", acc, None)
    for key in keys:
        if any(found.get(key, v) for v in ACCURACY_VARIANTS):
            lines += [f"Test top-1 (%), {_run_label(key)}:", "", markdown_table(accuracy_wide(found, key))]
    early = [p for k in keys for v in variants if (p := early_exit_paragraph(found, k, v))]
    ee = tables["early_exit"]
    main = ee[(ee["policy"] == MAIN_POLICY) & (ee["variant"].isin(variants))] if not ee.empty else ee
    lines += _section(
        "Early exits (paper §5.1)",
        early,
        main.drop(columns=["policy"], errors="ignore"),
        "Confidence-based early exits (accuracy %, cost % of the CNN); all policies in early_exit.csv.",
    )
    over = [p for k in keys for v in variants if (p := overthinking_paragraph(found, k, v))]
    lines += _section("Overthinking (paper §4)", over, tables["overthinking"])
    conf = [p for k in keys for v in variants if (p := confusion_paragraph(found, k, v))]
    lines += _section("Confusion (paper §5.2; AUROC columns are our addition)", conf, tables["confusion"])
    calib = [p for k in keys for v in variants if (p := calibration_paragraph(found, k, v))]
    lines += _section("Calibration (our addition)", calib, tables["calibration"], "Expected calibration error (0-1).")
    back = [p for k in keys if (p := backdoor_paragraph(found, k))]
    lines += _section("Backdoor (paper §4/§5)", back, tables["backdoor"])
    lines += _section("What ran", [], tables["status"])
    if figures:
        lines += ["## Figures", "", *[f"- [{name}](figures/{name})" for name in figures], ""]
    if found.problems:
        lines += ["## Problems reading results", "", *[f"- {p}" for p in found.problems], ""]
    return "\n".join(lines).rstrip() + "\n"
