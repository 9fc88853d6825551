"""Training recipes: typed, frozen, validated; the defaults are the paper's (spec section 3).

A :class:`Recipe` fully describes how one network is trained. ``milestones`` are 1-based epochs at which the
learning rate is multiplied by ``gamma`` (the new rate applies from that epoch on): with ``(35, 60, 85)`` epochs
1-34 run at ``lr``, 35-59 at ``lr * gamma`` and so on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

RecipeKind = Literal["cnn", "ic_only", "sdn"]
OptimizerName = Literal["sgd", "adam"]
BackboneMode = Literal["eval", "train"]

RECIPE_KINDS: tuple[str, ...] = ("cnn", "ic_only", "sdn")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
BACKBONE_MODES: tuple[str, ...] = ("eval", "train")
PAPER_IC_MAX_COEFFS: tuple[float, ...] = (0.15, 0.30, 0.45, 0.60, 0.75, 0.90)
PAPER_EPOCHS: dict[str, int] = {"cnn": 100, "ic_only": 25, "sdn": 100}  # per recipe kind
TAU_START = 0.01


@dataclass(frozen=True)
class Recipe:
    """How to train one network.

    ``backbone_mode`` only matters for ``kind="ic_only"``: ``"eval"`` keeps the frozen backbone truly frozen
    (BatchNorm running statistics and dropout unchanged); ``"train"`` reproduces the original code, whose backbone
    ran in train mode while its weights were frozen.

    ``clip_grad_norm``: scale each step's gradients down to this global L2 norm when larger (None, the paper's
    recipe: no clipping). Not in the paper; a remedy for a diverging run (WRN-32-4 SDN training at lr 0.1).
    """

    kind: RecipeKind
    optimizer: OptimizerName = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 100
    milestones: tuple[int, ...] = (35, 60, 85)
    gamma: float = 0.1
    batch_size: int = 128
    ic_max_coeffs: tuple[float, ...] = field(default=PAPER_IC_MAX_COEFFS)
    backbone_mode: BackboneMode = "eval"
    clip_grad_norm: float | None = None

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so that recipes built from JSON/YAML lists compare equal.
        object.__setattr__(self, "milestones", tuple(self.milestones))
        object.__setattr__(self, "ic_max_coeffs", tuple(float(c) for c in self.ic_max_coeffs))
        _choice("kind", self.kind, RECIPE_KINDS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("backbone_mode", self.backbone_mode, BACKBONE_MODES)
        _positive_finite("lr", self.lr)
        _positive_finite("gamma", self.gamma)
        if self.clip_grad_norm is not None:
            _positive_finite("clip_grad_norm", self.clip_grad_norm)
        _in_range("momentum", self.momentum, 0.0, 1.0, upper_open=True)
        _in_range("weight_decay", self.weight_decay, 0.0, math.inf)
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        for m in self.milestones:
            if isinstance(m, bool) or not isinstance(m, int):
                raise ValueError(f"milestones must be integers (1-based epochs), got {list(self.milestones)}")
        if list(self.milestones) != sorted(set(self.milestones)) or any(
            not 2 <= m <= self.epochs for m in self.milestones
        ):
            raise ValueError(
                f"milestones must be strictly increasing epochs in 2..epochs={self.epochs}, "
                f"got {list(self.milestones)}"
            )
        if not self.ic_max_coeffs:
            raise ValueError("ic_max_coeffs must not be empty")
        for c in self.ic_max_coeffs:
            _in_range("ic_max_coeffs", c, 0.0, math.inf, lower_open=True)

    def with_epochs(self, epochs: int) -> Recipe:
        """The same recipe over ``epochs`` epochs, milestones scaled proportionally.

        Scaled milestones are rounded, de-duplicated, and dropped when they fall outside ``2..epochs-1`` (a
        milestone at epoch 1 would skip the base rate; one at the last epoch or beyond would barely matter).
        """
        _positive_int("epochs", epochs)
        scaled = sorted({round(m * epochs / self.epochs) for m in self.milestones})
        return replace(self, epochs=epochs, milestones=tuple(m for m in scaled if 2 <= m < epochs))

    def with_overrides(self, overrides: Mapping[str, Any]) -> Recipe:
        """A copy with some fields replaced; unknown keys and invalid values raise ValueError naming the key.

        ``epochs`` rescales the milestones (:meth:`with_epochs`) unless ``milestones`` is given too.
        """
        _check_keys(overrides)
        changes = dict(overrides)
        base = self
        if "epochs" in changes and "milestones" not in changes:
            base = self.with_epochs(changes.pop("epochs"))
        return replace(base, **changes)

    def lr_at(self, epoch: int) -> float:
        """Learning rate used during 1-based ``epoch``."""
        drops = sum(1 for m in self.milestones if m <= epoch)
        return self.lr * self.gamma**drops

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["milestones"] = list(self.milestones)
        data["ic_max_coeffs"] = list(self.ic_max_coeffs)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Build a recipe from a plain mapping (e.g. ``meta.json``); every key is validated."""
        _check_keys(data)
        if "kind" not in data:
            raise ValueError("recipe needs a 'kind' (one of cnn, ic_only, sdn)")
        return cls(**dict(data))


def paper_recipe(kind: str, arch: str) -> Recipe:
    """The paper's recipe for ``kind`` on architecture ``arch`` (weight decay is the arch's, spec section 3.1).

    cnn and sdn: SGD lr 0.1, momentum 0.9, 100 epochs, x0.1 at 35/60/85. ic_only: Adam lr 1e-3 (coupled weight
    decay), 25 epochs, x0.1 at 15. Batch size 128.
    """
    from sdn.models import get_spec

    _choice("kind", kind, RECIPE_KINDS)
    weight_decay = get_spec(arch).weight_decay
    if kind == "ic_only":
        return Recipe(
            kind="ic_only",
            optimizer="adam",
            lr=1e-3,
            momentum=0.9,
            weight_decay=weight_decay,
            epochs=PAPER_EPOCHS["ic_only"],
            milestones=(15,),
            gamma=0.1,
            batch_size=128,
        )
    return Recipe(kind=kind, weight_decay=weight_decay, epochs=PAPER_EPOCHS[kind])  # type: ignore[arg-type]


def ic_loss_weights(epoch: int, epochs: int, max_coeffs: Sequence[float]) -> list[float]:
    """Weights of the internal classifiers' losses in SDN training at 1-based ``epoch`` of ``epochs``.

    ``tau_i(e) = min(C_i, 0.01 + e * C_i / E)``: grows linearly from about 0.01 to ``C_i`` (spec section 3.4). The
    caller passes one coefficient per internal classifier (see :func:`coefficients_for`).
    """
    _positive_int("epochs", epochs)
    if not 1 <= epoch <= epochs:
        raise ValueError(f"epoch must be in 1..{epochs}, got {epoch}")
    return [min(c, TAU_START + epoch * c / epochs) for c in max_coeffs]


def coefficients_for(num_ics: int, max_coeffs: Sequence[float]) -> tuple[float, ...]:
    """The first ``num_ics`` maximum coefficients; more internal classifiers than coefficients is an error."""
    if num_ics > len(max_coeffs):
        raise ValueError(
            f"the model has {num_ics} internal classifiers but ic_max_coeffs has only {len(max_coeffs)} "
            f"values {list(max_coeffs)}; give one coefficient per internal classifier"
        )
    return tuple(max_coeffs[:num_ics])


def _check_keys(data: Mapping[str, Any]) -> None:
    allowed = {f.name for f in fields(Recipe)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"unknown recipe key(s) {unknown}; allowed: {sorted(allowed)}")


def _choice(key: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


def _positive_finite(key: str, value: object) -> None:
    v = _number(key, value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{key} must be a positive finite number, got {value!r}")


def _in_range(
    key: str, value: object, low: float, high: float, *, lower_open: bool = False, upper_open: bool = False
) -> None:
    v = _number(key, value)
    too_low = v <= low if lower_open else v < low
    too_high = v >= high if upper_open else v > high
    if math.isnan(v) or too_low or too_high or (math.isinf(v)):
        left = "(" if lower_open else "["
        right = ")" if upper_open or math.isinf(high) else "]"
        raise ValueError(f"{key} must be in {left}{low}, {high}{right}, got {value!r}")


def _positive_int(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
