"""Networks by name: ``torchvision/<builder>`` and ``timm/<name>`` split into :class:`BackboneParts`.

The ordered list of blocks an exit may follow is found per model *family*, not per model: residual stages
(``layer1``..``layer4``: ResNet, ResNeXt, Wide ResNet, timm ResNets), ``features`` stages (MobileNet, EfficientNet,
ConvNeXt, Swin, RegNet-free torchvision CNNs), transformer encoder layers (torchvision ViT, timm ViT/DeiT) and timm's
``stages`` (timm ConvNeXt and kin). Each family is a ``(matches, split)`` pair; :func:`register_family` adds one for
a network that is not understood (see the README, "Bring your own network")::

    from sdn.models import BackboneParts
    from sdn.models.external import register_family

    register_family(
        "vgg",
        lambda m: type(m).__name__ == "VGG",
        lambda m: BackboneParts(stem=m.features[:7], blocks=[m.features[7:14], ...], head=...),
    )

The split modules share their parameters with the original network, so weights are loaded into the original (its
own key layout) before the split. ``weights``: a local state-dict file of the original network, or a hub weights
name (torchvision: ``DEFAULT``, ``IMAGENET1K_V1``, ...; timm: ``DEFAULT`` or a pretrained tag) used where the
network can reach the hub. A final classifier of another size than ``num_classes`` is replaced by a fresh one.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdn.models.multiexit import BackboneParts
from sdn.models.registry import ArchSpec, register_resolver

log = logging.getLogger(__name__)
SOURCES = ("torchvision", "timm")
PAPER_FRACTIONS = (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)  # exits "paper" on these networks: the paper's cost fractions
EXTERNAL_WEIGHT_DECAY = 1e-4
TIMM_EXTRA = "pip install -e '.[timm]' (or pip install timm)"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


class BlocksNotFoundError(ValueError):
    """No registered family knows how to split this network into stem, blocks and head."""


@dataclass(frozen=True)
class Family:
    name: str
    matches: Callable[[nn.Module], bool]
    split: Callable[[nn.Module], BackboneParts]


_FAMILIES: list[Family] = []


def register_family(
    name: str, matches: Callable[[nn.Module], bool], split: Callable[[nn.Module], BackboneParts]
) -> Family:
    """Teach sdn a network family: ``matches(model)`` says whether ``split(model)`` applies. Families registered
    later are tried first, so a user's family wins over a built-in one."""
    family = Family(name, matches, split)
    _FAMILIES.insert(0, family)
    return family


def families() -> list[str]:
    return [f.name for f in _FAMILIES]


# ---------------------------------------------------------------- names


def parse_name(name: str) -> tuple[str, str]:
    """``"torchvision/resnet18"`` (or ``"torchvision.resnet18"``, usable as a folder name) -> ("torchvision",
    "resnet18"); other prefixes are refused."""
    source, _, model = name.partition("/") if "/" in name else name.partition(".")
    if source not in SOURCES or not model:
        raise ValueError(
            f"unknown architecture {name!r}: name external networks torchvision/<builder> or timm/<name>"
        )
    return source, model


def _import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ImportError(f"timm models need the optional dependency timm: {TIMM_EXTRA}") from None
    return timm


def _unknown(name: str, known: Sequence[str], listing: str) -> ValueError:
    separator = "/" if "/" in name else "."
    source, _, model = name.partition(separator)
    close = difflib.get_close_matches(model, list(known), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(f'{source}{separator}{c}' for c in close)}" if close else ""
    return ValueError(f"unknown architecture {name!r}{hint} ({listing})")


def check_name(name: str) -> tuple[str, str]:
    """Parse and check that the source offers this model; unknown names get close matches."""
    source, model = parse_name(name)
    if source == "torchvision":
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if model not in known:
            raise _unknown(name, known, "torchvision.models.list_models(module=torchvision.models) lists them")
    else:
        timm = _import_timm()
        known = timm.list_models()
        if model.partition(".")[0] not in known:
            raise _unknown(name, known, "timm.list_models() lists them")
    return source, model


@functools.cache
def external_spec(name: str) -> ArchSpec:
    """The registry entry of ``torchvision/<builder>`` or ``timm/<name>`` (checked, built lazily)."""
    source, model = check_name(name)
    return ArchSpec(
        name=name,
        builder=functools.partial(build_parts, name),
        paper_exits=(),
        weight_decay=EXTERNAL_WEIGHT_DECAY,
        description=f"{source} {model}, exits by cost",
        input_sizes=None,
        paper_cost=PAPER_FRACTIONS,
        takes_weights=True,
    )


# ---------------------------------------------------------------- building and weights


def build_parts(name: str, *, num_classes: int, input_size: int, weights: str | None = None) -> BackboneParts:
    """Instantiate ``name`` (with ``weights``) and split it into stem, blocks and head by its family."""
    model = instantiate(name, num_classes=num_classes, input_size=input_size, weights=weights)
    return split_model(model, name)


def instantiate(name: str, *, num_classes: int, input_size: int, weights: str | None = None) -> nn.Module:
    """The original network, ``num_classes`` outputs, built for ``input_size`` where the family needs it (ViT)."""
    source, model_name = parse_name(name)
    if weights is not None and not is_local_weights(weights):
        return _from_hub(source, model_name, weights, num_classes=num_classes, input_size=input_size)
    model = _fresh(source, model_name, num_classes=num_classes, input_size=input_size)
    if weights is not None:
        load_local_weights(model, weights, name)
    return model


def _fresh(source: str, model_name: str, *, num_classes: int, input_size: int) -> nn.Module:
    if source == "torchvision":
        import torchvision

        kwargs: dict[str, Any] = {"num_classes": num_classes}
        if model_name.startswith("vit_"):
            kwargs["image_size"] = input_size
        return torchvision.models.get_model(model_name, weights=None, **kwargs)
    timm = _import_timm()
    try:
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes, img_size=input_size)
    except TypeError:  # a CNN takes no img_size
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes)


def is_local_weights(weights: str) -> bool:
    """A path (has a separator, a weights-file suffix, or exists) rather than a hub weights name."""
    return os.sep in weights or "/" in weights or weights.endswith(WEIGHT_SUFFIXES) or Path(weights).exists()


def _offline_hint(name: str) -> str:
    return (
        f"without network access, download the weights elsewhere, save the network's state_dict "
        f"(torch.save(model.state_dict(), 'weights.pth')) and pass its path as weights: (--weights) for {name}"
    )


def _from_hub(source: str, model_name: str, weights: str, *, num_classes: int, input_size: int) -> nn.Module:
    name = f"{source}/{model_name}"
    if source == "torchvision":
        import torchvision

        try:
            enum = torchvision.models.get_model_weights(model_name)
            entry = torchvision.models.get_weight(weights) if "." in weights else enum[weights]
        except (KeyError, ValueError) as error:
            options = ", ".join(["DEFAULT", *(w.name for w in torchvision.models.get_model_weights(model_name))])
            raise ValueError(f"unknown weights {weights!r} for {name}; torchvision offers {options}") from error
        try:
            state = entry.get_state_dict(progress=False)
        except Exception as error:  # noqa: BLE001 - every failed download is reported the same way
            raise RuntimeError(
                f"could not fetch {name} weights {weights!r} ({error}); {_offline_hint(name)}"
            ) from error
        model = _fresh(source, model_name, num_classes=num_classes, input_size=input_size)
        _load_state(model, state, name, f"torchvision weights {weights}")
        return model
    timm = _import_timm()
    tagged = model_name if weights == "DEFAULT" else f"{model_name.partition('.')[0]}.{weights}"
    try:
        return timm.create_model(tagged, pretrained=True, num_classes=num_classes)
    except Exception as error:  # noqa: BLE001 - every failed download is reported the same way
        raise RuntimeError(f"could not fetch timm weights {tagged!r} ({error}); {_offline_hint(name)}") from error


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict saved by ``torch.save`` (plain, or under ``state_dict``/``model``) or a ``.safetensors`` file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"weights file {file} does not exist; pass a state-dict file saved with torch.save")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload: Any = load_file(str(file))
        else:
            payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"weights file {file} cannot be read as a state dict ({error})") from error
    for key in ("state_dict", "model"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"weights file {file} holds no state dict (a mapping of names to tensors)")
    return payload


def load_local_weights(model: nn.Module, path: str | os.PathLike[str], name: str) -> None:
    _load_state(model, read_state_dict(path), name, f"weights file {path}")


def classifier_name(model: nn.Module) -> str | None:
    """Qualified name of the network's final classifier: its last ``nn.Linear`` (None: it has none)."""
    last = None
    for qualified, module in model.named_modules():
        if type(module) is nn.Linear:
            last = qualified
    return last


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], name: str, what: str) -> None:
    """Load ``state`` into ``model`` strictly, except that a final classifier of another size stays fresh."""
    own = model.state_dict()
    head = classifier_name(model)
    head_keys = {f"{head}.weight", f"{head}.bias"} if head is not None else set()
    resized = sorted(k for k in head_keys if k in state and k in own and state[k].shape != own[k].shape)
    wrong_shape = sorted(k for k in state if k in own and k not in resized and state[k].shape != own[k].shape)
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected or wrong_shape:
        shapes = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in wrong_shape[:3]]
        raise ValueError(
            f"{what} does not fit {name} (is it for another architecture or input size?): "
            f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), "
            f"wrong shape {shapes} ({len(wrong_shape)})"
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in resized}, strict=False)
    if resized:
        log.warning(
            "%s: %s has a classifier of another size; %s starts fresh for this data set (fine-tune it with the "
            "cnn or sdn recipe: IC-only training keeps it frozen)",
            name,
            what,
            head,
        )


# ---------------------------------------------------------------- splitting


def split_model(model: nn.Module, name: str) -> BackboneParts:
    """Stem, blocks and head of ``model`` by the first family that matches it."""
    reason = f"no family matches (known: {', '.join(families())})"
    for family in _FAMILIES:
        if family.matches(model):
            try:
                parts = family.split(model)
            except BlocksNotFoundError as error:
                reason = f"the {family.name} family does not fit it: {error}"
                break
            if len(parts.blocks) >= 2:
                return parts
            reason = f"the {family.name} family found {len(parts.blocks)} block(s); exits need at least two"
            break
    raise BlocksNotFoundError(
        f"{name}: cannot find the blocks of a {type(model).__name__} ({reason}). "
        "Register how to split it in a few lines:\n"
        "    from sdn.models import BackboneParts\n"
        "    from sdn.models.external import register_family\n"
        f"    register_family('mine', lambda m: type(m).__name__ == '{type(model).__name__}',\n"
        "                    lambda m: BackboneParts(stem=..., blocks=[...], head=...))\n"
        "where head(blocks[-1](...blocks[0](stem(x)))) must equal model(x) (README, 'Bring your own network')"
    )


class _Bound(nn.Module):
    """``fn(owner, x)`` with the parts of ``owner`` that ``fn`` uses registered here under their own names.

    ``owner`` itself is not registered (its other parts belong to other pieces of the split), so parameters appear
    once in the multi-exit network's state dict.
    """

    def __init__(self, owner: nn.Module, names: Sequence[str], fn: Callable[[nn.Module, torch.Tensor], Any]) -> None:
        super().__init__()
        for attr in names:
            value = getattr(owner, attr, None)
            if isinstance(value, nn.Module | nn.Parameter):
                setattr(self, attr, value)
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_fn", fn)

    def forward(self, x: torch.Tensor) -> Any:
        return self._fn(self._owner, x)


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _is_stage(module: nn.Module) -> bool:
    """A plain Sequential/ModuleList of non-leaf modules of one class (a stage of blocks)."""
    children = list(module.children())
    return (
        type(module) in (nn.Sequential, nn.ModuleList)
        and len(children) >= 1
        and all(not _is_leaf(c) for c in children)
        and len({type(c) for c in children}) == 1
    )


def blocks_of(items: Sequence[nn.Module]) -> list[nn.Module]:
    """Flatten stages into their blocks; a transition (a module of another class than the blocks, e.g. a
    downsampling layer or a last 1x1 conv) is joined to the next block, or to the previous one at the end."""
    units: list[nn.Module] = []
    for item in items:
        if _is_stage(item):
            units.extend(item.children())
        elif _is_leaf(item):
            raise BlocksNotFoundError(f"a bare {type(item).__name__} layer sits among the blocks")
        else:
            units.append(item)
    if not units:
        return []
    block_type = Counter(type(u) for u in units).most_common(1)[0][0]
    blocks: list[nn.Module] = []
    pending: list[nn.Module] = []
    for unit in units:
        if type(unit) is block_type:
            blocks.append(nn.Sequential(*pending, unit) if pending else unit)
            pending = []
        else:
            pending.append(unit)
    if pending and blocks:
        blocks[-1] = nn.Sequential(blocks[-1], *pending)
    return blocks


# torchvision ResNet / ResNeXt / Wide ResNet and timm ResNets: stem = everything before layer1


def _is_resnet(m: nn.Module) -> bool:
    return all(hasattr(m, f"layer{i}") for i in range(1, 5)) and hasattr(m, "fc")


def _split_resnet(m: nn.Module) -> BackboneParts:
    children = dict(m.named_children())
    names = list(children)
    first = names.index("layer1")
    stem = nn.Sequential(*(children[n] for n in names[:first]))
    blocks = [b for i in range(1, 5) for b in children[f"layer{i}"].children()]
    if hasattr(m, "forward_head"):  # timm
        head: nn.Module = _Bound(m, names[names.index("layer4") + 1 :], lambda o, x: o.forward_head(x))
    else:
        head = nn.Sequential(m.avgpool, nn.Flatten(1), m.fc)
    return BackboneParts(stem=stem, blocks=blocks, head=head)


# torchvision features-style CNNs (MobileNet V2/V3, EfficientNet, ConvNeXt) and Swin (channels-last stages)


def _is_features(m: nn.Module) -> bool:
    return isinstance(getattr(m, "features", None), nn.Sequential) and (
        hasattr(m, "classifier") or hasattr(m, "permute")
    )


def _split_features(m: nn.Module) -> BackboneParts:
    items = list(m.features.children())
    stem, blocks = items[0], blocks_of(items[1:])
    if hasattr(m, "permute"):  # Swin: (B, H, W, C) stages, then norm, permute, pool, flatten, head
        head: nn.Module = nn.Sequential(m.norm, m.permute, m.avgpool, m.flatten, m.head)
        return BackboneParts(stem=stem, blocks=blocks, head=head, layout="hwc")
    pool = getattr(m, "avgpool", None) or nn.AdaptiveAvgPool2d(1)
    flattens = any(isinstance(c, nn.Flatten) for c in m.classifier.modules())
    head = nn.Sequential(pool, m.classifier) if flattens else nn.Sequential(pool, nn.Flatten(1), m.classifier)
    return BackboneParts(stem=stem, blocks=blocks, head=head)


# torchvision VisionTransformer: stem = patch embedding + class token + position embedding


def _is_torchvision_vit(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("conv_proj", "class_token", "encoder", "heads"))


class _VitStem(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.conv_proj = m.conv_proj
        self.class_token = m.class_token
        self.pos_embedding = m.encoder.pos_embedding
        self.dropout = m.encoder.dropout
        self.hidden_dim = int(m.hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class ClassToken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _split_torchvision_vit(m: nn.Module) -> BackboneParts:
    head = nn.Sequential(m.encoder.ln, ClassToken(), m.heads)
    return BackboneParts(stem=_VitStem(m), blocks=list(m.encoder.layers), head=head, layout="tokens")


# timm vision transformers (ViT, DeiT, ...): patch_embed + _pos_embed, blocks, norm + forward_head


def _is_timm_vit(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("patch_embed", "blocks", "_pos_embed", "forward_head"))


def _timm_vit_stem(o: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return o.norm_pre(o.patch_drop(o._pos_embed(o.patch_embed(x))))


def _split_timm_vit(m: nn.Module) -> BackboneParts:
    stem_names = ["patch_embed", "cls_token", "reg_token", "pos_embed", "pos_drop", "patch_drop", "norm_pre"]
    head_names = [n for n, _ in m.named_children() if n not in {*stem_names, "blocks"}]
    stem = _Bound(m, stem_names, _timm_vit_stem)
    head = _Bound(m, head_names, lambda o, x: o.forward_head(o.norm(x)))
    pool = "cls" if getattr(m, "global_pool", "token") == "token" else "mean"
    return BackboneParts(stem=stem, blocks=list(m.blocks), head=head, layout="tokens", token_pool=pool)


# timm stage networks (ConvNeXt and kin): stem, stages of (downsample, blocks), forward_head


def _is_timm_stages(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("stem", "stages", "forward_head"))


def _stage_items(stage: nn.Module) -> list[nn.Module]:
    inner = getattr(stage, "blocks", None)
    if inner is None:
        return [stage]
    down = getattr(stage, "downsample", None)
    items = list(inner.children())
    if isinstance(down, nn.Module) and not isinstance(down, nn.Identity) and items:
        items[0] = nn.Sequential(down, items[0])
    return items


def _split_timm_stages(m: nn.Module) -> BackboneParts:
    blocks = [b for stage in m.stages.children() for b in _stage_items(stage)]
    head_names = [n for n, _ in m.named_children() if n not in {"stem", "stages"}]

    def head_fn(o: nn.Module, x: torch.Tensor) -> torch.Tensor:
        norm_pre = getattr(o, "norm_pre", None)
        return o.forward_head(norm_pre(x) if norm_pre is not None else x)

    return BackboneParts(stem=m.stem, blocks=blocks, head=_Bound(m, head_names, head_fn))


# registered in reverse priority: later ones are tried first
register_family("timm-stages", _is_timm_stages, _split_timm_stages)
register_family("timm-vit", _is_timm_vit, _split_timm_vit)
register_family("torchvision-vit", _is_torchvision_vit, _split_torchvision_vit)
register_family("features", _is_features, _split_features)
register_family("resnet", _is_resnet, _split_resnet)
for _source in SOURCES:
    register_resolver(_source, external_spec)


def original_state_dict(
    name: str, state: dict[str, torch.Tensor], *, num_classes: int, input_size: int
) -> dict[str, torch.Tensor]:
    """The weights of a trained multi-exit ``name`` (a ``model.pt`` state dict) in the original network's own key
    layout, exits dropped: what ``weights:`` loads (e.g. ``torch.save(original_state_dict(...), 'net.pth')``)."""
    from sdn.models.multiexit import BACKBONE_PREFIXES, MultiExitNet

    with torch.random.fork_rng(devices=[]):
        original = instantiate(name, num_classes=num_classes, input_size=input_size)
    cnn = MultiExitNet(split_model(original, name), num_classes=num_classes, input_size=input_size)
    cnn.load_state_dict({k: v for k, v in state.items() if k.startswith(BACKBONE_PREFIXES)}, strict=True)
    return {k: v.detach().clone() for k, v in original.state_dict().items()}
