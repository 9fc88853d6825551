"""The early-exit policy a trained SDN is deployed with: read from the early-exit analysis beside its model.

``sdn early-exit`` (the workflow's ``early_exit`` rule) writes ``<run>/analysis/early_exit/summary.json`` next to
``<run>/model.pt``: per policy and rule (``tolerance``, ``budget_0.5``, ...) the threshold chosen on the held-out
split. This module is the one reader of that choice for deployment (:mod:`sdn.predict`, the MLflow model), so a user
never has to know the threshold. The file itself is written by :mod:`sdn.commands.early_exit`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sdn.analysis.early_exit import check_threshold
from sdn.io import read_json

SUMMARY = Path("analysis") / "early_exit" / "summary.json"  # relative to the folder of model.pt
DEFAULT_POLICY = "confidence"  # the paper's rule
DEFAULT_RULE = "tolerance"


@dataclass(frozen=True)
class ExitPolicy:
    """How to exit: ``policy`` at ``threshold`` (answer of unstopped samples by ``fallback``).

    ``rule`` and ``source`` say where the threshold came from (``"tolerance"`` and the summary.json path, or
    ``"given"`` and ``None`` for a threshold set by hand).
    """

    policy: str
    threshold: float | int
    fallback: str = "final"
    rule: str = "given"
    source: str | None = None

    def record(self) -> dict[str, Any]:
        return asdict(self)


def summary_path(checkpoint: str | os.PathLike[str]) -> Path:
    """Where the early-exit analysis of the model at ``checkpoint`` (a model.pt) is written."""
    return Path(checkpoint).parent / SUMMARY


def from_summary(path: str | os.PathLike[str], policy: str = DEFAULT_POLICY, rule: str = DEFAULT_RULE) -> ExitPolicy:
    """The threshold ``rule`` chose for ``policy`` in an early-exit ``summary.json``.

    Raises FileNotFoundError (no analysis: run it or give a threshold) or ValueError naming the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no early-exit analysis at {path}, so no default threshold: run `sdn early-exit` for this model "
            "(the workflow's early_exit rule) or give a threshold explicitly (--threshold)"
        )
    try:
        summary = read_json(path)
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rerun `sdn early-exit` for this model") from None
    policies = summary.get("policies") if isinstance(summary, dict) else None
    if not isinstance(policies, dict):
        raise ValueError(f"{path} has no 'policies' object: not an early-exit summary; rerun `sdn early-exit`")
    if policy not in policies:
        raise ValueError(f"{path} holds no policy {policy!r}; it has: {', '.join(policies) or 'none'}")
    rules = policies[policy]
    if rule not in rules:
        raise ValueError(f"{path} holds no rule {rule!r} for policy {policy!r}; it has: {', '.join(rules)}")
    entry = rules[rule]
    if entry.get("status") != "ok" or entry.get("threshold") is None:
        raise ValueError(
            f"{path}: rule {rule!r} chose no threshold for policy {policy!r} ({entry.get('reason', 'no reason')}); "
            "choose another rule or give a threshold explicitly (--threshold)"
        )
    return ExitPolicy(
        policy=policy,
        threshold=entry["threshold"],
        fallback=str(summary.get("fallback", "final")),
        rule=rule,
        source=str(path),
    )


def resolve(
    checkpoint: str | os.PathLike[str],
    *,
    policy: str | None = None,
    threshold: float | int | None = None,
    rule: str | None = None,
    summary: str | os.PathLike[str] | None = None,
) -> ExitPolicy:
    """The policy to deploy ``checkpoint`` with: an explicit ``threshold`` wins, else ``rule`` (default
    ``tolerance``) from the early-exit summary (default: the one beside the checkpoint)."""
    policy = policy or DEFAULT_POLICY
    if threshold is not None:
        if rule is not None:
            raise ValueError("give either a threshold or a rule, not both")
        fallback = "final"
        source = Path(summary) if summary is not None else summary_path(checkpoint)
        if source.is_file():  # keep the analysis' fallback, so the answers match it
            fallback = str((read_json(source) or {}).get("fallback", "final"))
        return ExitPolicy(policy=policy, threshold=threshold, fallback=fallback)
    return from_summary(summary if summary is not None else summary_path(checkpoint), policy, rule or DEFAULT_RULE)


def override(base: ExitPolicy, *, policy: str | None = None, threshold: Any = None) -> ExitPolicy:
    """``base`` with ``policy`` and/or ``threshold`` replaced, the threshold checked for the policy (ValueError
    naming policy, value and range). Changing either makes the threshold ``given`` (no longer the rule's)."""
    name = policy if policy is not None else base.policy
    value = check_threshold(name, threshold if threshold is not None else base.threshold)
    if name == base.policy and value == base.threshold:
        return ExitPolicy(name, value, base.fallback, base.rule, base.source)
    return ExitPolicy(name, value, base.fallback)
