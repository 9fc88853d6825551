"""ONNX export of a trained SDN cut at its exits, and an ONNX Runtime runner that really stops at the exit.

The one owner of the exported folder::

    DIR/manifest.json      format, arch, classes, input shape, exit positions, the files below, the opset
    DIR/segment_<k>.onnx   k = 0 .. E-2: the blocks up to internal classifier k (the stem in segment 0)
                           input "x" -> outputs "features" (fed to segment k+1) and "logits" (IC k)
    DIR/final.onnx         the blocks after the last IC and the final head: "x" -> "logits"
    DIR/cnn.onnx           the plain network (stem, every block, head; no IC): "x" -> "logits"
    DIR/early_exit_<policy>.onnx   (format 2) the segments nested in ``If`` nodes, one graph that stops each image
                           at its exit (:mod:`sdn.onnx_exit_graph`): "x", "threshold" -> "answer"

The manifest's ``ic_weights`` says how the ICs' linear layers are stored: ``float32`` (the default; logits equal
PyTorch's) or ``int8`` (``ic_weights="int8"``, :mod:`sdn.onnx_int8`: faster at batch 1 where the ICs' weights are
large, an approximation; the backbone, the final head and the CNN graph stay float32).

Every graph has a dynamic batch axis. Why not one graph with every exit as an output: it computes every block and
every IC for every image, i.e. the full SDN's cost (more than the CNN's) whatever the images. Segments let a runner
stop each image at its exit and drop the images that exited from the batch before the next segment; the
``early_exit`` graphs do the same inside ONNX Runtime, with control-flow nodes, in one call per batch.

:class:`OnnxEarlyExit` decides as :func:`sdn.inference.early_exit_forward` and the offline simulation do: a float64
softmax of each IC's logits, the sample leaves at the first IC whose top probability reaches the threshold
(``confidence``) or whose normalised entropy is at most it (``entropy``); samples no IC stops take the final
head's answer. Its ``engine`` is ``"one-graph"`` (the default where the folder has the graph: it measured faster,
see docs/deploy-latency.md) or ``"segments"`` (a Python loop over the segment graphs).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sdn import io
from sdn.analysis.arrays import softmax
from sdn.analysis.early_exit import PER_EXIT_POLICIES, check_threshold, normalised_entropy
from sdn.models.exits import inference_pool
from sdn.models.multiexit import MultiExitNet

FORMAT = "sdn-onnx-segments"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # format 1: no one-graph early exit (its runner uses the segments)
MANIFEST = "manifest.json"
OPSET = 18
POLICIES = PER_EXIT_POLICIES  # those the runner and the one graph decide with
IC_WEIGHTS = ("float32", "int8")
IC_WEIGHT_NAME = "exit.linear.weight"  # the IC's linear layer in a segment graph (_Segment.exit)
ENGINES = ("one-graph", "segments")


class _Segment(nn.Module):
    """Blocks ``[start, stop]`` (with the stem when ``start == 0``) and IC ``ic`` (None: the final head)."""

    def __init__(self, model: MultiExitNet, start: int, stop: int, ic: int | None, stem: bool) -> None:
        super().__init__()
        self.stem = model.stem if stem else nn.Identity()
        self.blocks = nn.Sequential(*list(model.blocks)[start : stop + 1])
        self.exit = model.head if ic is None else _inference_head(model.exits[ic])
        self.final = ic is None

    def forward(self, x: torch.Tensor) -> Any:
        h = self.blocks(self.stem(x))
        if self.final:
            return self.exit(h)
        return h, self.exit(h)


def _inference_head(head: nn.Module) -> nn.Module:
    """The IC as exported: a copy whose mixed pooling of kernel 1 is skipped (``inference_pool``; the model itself
    is left as it is)."""
    pool = getattr(head, "pool", None)
    if pool is None or inference_pool(pool) is pool:
        return head
    exported = copy.deepcopy(head)
    exported.pool = inference_pool(exported.pool)
    return exported


def _export_graph(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str]) -> None:
    """``module`` on inputs shaped like ``example`` (batch axis dynamic) to ``path``, written under a temp name."""
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=["x"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["x", *outputs]},
            opset_version=OPSET,
            dynamo=False,
        )
    os.replace(tmp, path)


@torch.no_grad()
def export(
    model: MultiExitNet,
    out_dir: str | os.PathLike[str],
    *,
    meta: dict[str, Any] | None = None,
    ic_weights: str = "float32",
) -> Path:
    """Write ``model`` (on the CPU, eval mode) as segment graphs, the final graph, the CNN graph and the manifest
    into ``out_dir``; return the manifest's path. The manifest is written last: a folder without it is incomplete.
    ``ic_weights="int8"`` stores the ICs' linear layers as int8 (:mod:`sdn.onnx_int8`).
    """
    if ic_weights not in IC_WEIGHTS:
        raise ValueError(f"ic_weights must be one of {', '.join(IC_WEIGHTS)}, got {ic_weights!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    was_training = model.training
    model = model.eval()
    device = next(model.parameters()).device
    try:
        example = torch.zeros(2, 3, model.input_size, model.input_size, device=device)
        segments = []
        features = example
        start = 0
        for k, position in enumerate(model.exit_positions):
            segment = _Segment(model, start, position, k, stem=start == 0).eval()
            name = f"segment_{k}.onnx"
            _export_graph(segment, features, out / name, ["features", "logits"])
            if ic_weights == "int8":
                _quantize_ic(out / name)
            segments.append({"file": name, "blocks": [start, position], "exit": k})
            features, _ = segment(features)
            start = position + 1
        tail = _Segment(model, start, len(model.blocks) - 1, None, stem=start == 0).eval()
        _export_graph(tail, features, out / "final.onnx", ["logits"])
        cnn = _Segment(model, 0, len(model.blocks) - 1, None, stem=True).eval()
        _export_graph(cnn, example, out / "cnn.onnx", ["logits"])
    finally:
        model.train(was_training)
    one_graph = _write_one_graphs(out, segments, model.num_classes, [3, model.input_size, model.input_size])
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "opset": OPSET,
        "torch": torch.__version__,
        "arch": (meta or {}).get("arch"),
        "num_classes": model.num_classes,
        "input_shape": [3, model.input_size, model.input_size],
        "exit_positions": list(model.exit_positions),
        "num_exits": model.num_exits,
        "segments": segments,
        "final": {"file": "final.onnx", "blocks": [start, len(model.blocks) - 1]},
        "cnn": {"file": "cnn.onnx"},
        "one_graph": one_graph,
        "ic_weights": ic_weights,
        "dataset": (meta or {}).get("dataset"),
    }
    io.write_json(out / MANIFEST, manifest)
    return out / MANIFEST


def _quantize_ic(path: Path) -> None:
    """Rewrite the segment graph at ``path`` with its IC's linear layer in int8 (written under a temp name)."""
    import onnx

    from sdn import onnx_int8

    graph = onnx_int8.quantize_linear_node(onnx.load(str(path)), IC_WEIGHT_NAME)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(graph, str(tmp))
    os.replace(tmp, path)


def _write_one_graphs(out: Path, segments: list[dict[str, Any]], num_classes: int, input_shape: list[int]) -> dict:
    """``early_exit_<policy>.onnx`` for each policy, composed from the segment graphs just written; returns the
    manifest's ``one_graph`` entry ({policy: file}). Where the segments cannot be composed (a control-flow node
    inside one, or a graph past protobuf's 2 GB) it warns and returns {}: the runner then uses the segments."""
    import onnx

    from sdn import onnx_exit_graph

    parts = [onnx.load(str(out / s["file"])) for s in segments]
    final = onnx.load(str(out / "final.onnx"))
    files = {}
    for policy in POLICIES:
        name = f"early_exit_{policy}.onnx"
        tmp = out / (name + ".tmp")
        try:
            graph = onnx_exit_graph.build(
                parts, final, policy=policy, num_classes=num_classes, input_shape=input_shape, opset=OPSET
            )
            onnx.save(graph, str(tmp))
        except (NotImplementedError, ValueError, onnx.checker.ValidationError) as err:
            tmp.unlink(missing_ok=True)
            warnings.warn(
                f"{out}: no one-graph early exit written ({err}); the segments engine runs this export", stacklevel=3
            )
            return {}
        os.replace(tmp, out / name)
        files[policy] = name
    return files


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an exported folder, checked: a clear error names the folder and what is wrong."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: export the model first (sdn export --format onnx --out {folder})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); export the model again") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}, expected "
            f"{FORMAT!r} version {' or '.join(map(str, READABLE_VERSIONS))}; export the model again with this "
            "version of sdn"
        )
    files = [s["file"] for s in manifest["segments"]] + [manifest["final"]["file"], manifest["cnn"]["file"]]
    files += list(manifest.get("one_graph", {}).values())
    missing = [f for f in files if not (Path(folder) / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: graph file(s) {missing} listed in {MANIFEST} are missing; export again")
    return manifest


_SHARED_POOL_THREADS: int | None = None  # the size of ONNX Runtime's process-wide pool once set here; 0: unavailable


def shared_thread_pool(threads: int) -> int:
    """The size of ONNX Runtime's process-wide intra-op thread pool, created here with ``threads`` threads on the
    first call (it cannot be resized afterwards); 0 where this ONNX Runtime offers no such pool.

    Each segment is a session of its own. With a pool per session, the pool that ran the last segment still spins
    while the next segment's pool starts, and on 2 cores with 2 threads ResNet-56's early exit at batch 1 took 2.2x
    the time of the whole network. One shared pool has no such contention (and the whole network shares it too).
    """
    global _SHARED_POOL_THREADS
    if _SHARED_POOL_THREADS is None:
        try:
            from onnxruntime.capi import _pybind_state

            _pybind_state.set_global_thread_pool_sizes(threads, 1)
            _SHARED_POOL_THREADS = threads
        except Exception:  # noqa: BLE001 - no such API in this version, or a pool someone else created
            _SHARED_POOL_THREADS = 0
    return _SHARED_POOL_THREADS


def session_options(threads: int) -> Any:
    """ONNX Runtime session options for ``threads`` intra-op threads: the process-wide pool where there is one
    (every session of the process must then use it; a pool of another size is used with a warning), else a pool
    per session that does not spin."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    pool = shared_thread_pool(threads)
    if pool:
        options.use_per_session_threads = False
        if pool != threads:
            warnings.warn(
                f"ONNX Runtime's process-wide thread pool has {pool} thread(s), set by the first runner of this "
                f"process; {threads} asked for here cannot be had (the pool cannot be resized): using {pool}",
                stacklevel=3,
            )
    else:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # a pool left spinning after its segment ran would take a core from the next segment's pool
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxEarlyExit:
    """Online early exit over an exported folder with ONNX Runtime (CPU by default).

    ``runner(images)`` takes normalised float32 images [B, C, H, W] (numpy) and returns ``(predictions,
    exit_index)`` int64 [B]; ``runner.cnn(images)`` the plain network's predictions; ``runner.logits(images)``
    every exit's logits [E, B, K] (all segments run on all images: for checking, not for serving).
    ``engine``: ``"one-graph"`` (one ONNX Runtime call per batch; the default where the folder has the graph) or
    ``"segments"`` (one call per segment, the exit tests in numpy).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        threshold: float,
        policy: str = "confidence",
        providers: list[str] | None = None,
        threads: int | None = None,
        engine: str | None = None,
    ) -> None:
        import onnxruntime as ort

        if policy not in POLICIES:
            raise ValueError(f"the ONNX runner supports policies {list(POLICIES)}, got {policy!r}")
        if engine is not None and engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
        self.threshold = check_threshold(policy, threshold)
        self.policy = policy
        self.manifest = read_manifest(folder)
        one_graph = self.manifest.get("one_graph", {}).get(policy)
        if engine == "one-graph" and one_graph is None:
            raise ValueError(
                f"{Path(folder) / MANIFEST}: no one-graph early exit in this export (format version "
                f"{self.manifest['format_version']}); export the model again, or pass engine='segments'"
            )
        self.engine = engine or ("one-graph" if one_graph else "segments")
        providers = providers or ["CPUExecutionProvider"]
        options = session_options(threads or torch.get_num_threads())

        def session(name: str) -> Any:
            return ort.InferenceSession(str(Path(folder) / name), sess_options=options, providers=providers)

        self.segments = [session(s["file"]) for s in self.manifest["segments"]]
        self.final = session(self.manifest["final"]["file"])
        self.whole = session(self.manifest["cnn"]["file"])
        self.one_graph = session(one_graph) if self.engine == "one-graph" else None
        if self.one_graph is not None:
            from sdn.onnx_exit_graph import decode

            self._decode = decode
        self._threshold_feed = np.array(self.threshold, dtype=np.float64)
        self.input_shape = tuple(self.manifest["input_shape"])
        self.version = ort.__version__

    @property
    def num_exits(self) -> int:
        return len(self.segments) + 1

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"images must be float32 [B, {', '.join(map(str, self.input_shape))}] (normalised as in training), "
                f"got shape {tuple(images.shape)}"
            )
        return np.ascontiguousarray(images, dtype=np.float32)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self._check(images)
        if self.one_graph is not None:
            (answer,) = self.one_graph.run(None, {"x": x, "threshold": self._threshold_feed})
            return self._decode(answer, self.manifest["num_classes"])
        batch = x.shape[0]
        if batch == 1:
            prediction, exit_at = self._one(x)
            return np.array([prediction], dtype=np.int64), np.array([exit_at], dtype=np.int64)
        predictions = np.empty(batch, dtype=np.int64)
        exit_index = np.full(batch, self.num_exits - 1, dtype=np.int64)
        active = np.arange(batch)
        for k, segment in enumerate(self.segments):
            if active.size == 0:
                return predictions, exit_index
            x, logits = segment.run(None, {"x": x})
            probs = softmax(logits)
            fired = self._fires(probs)
            if fired.any():
                done = active[fired]
                predictions[done] = probs[fired].argmax(axis=1)
                exit_index[done] = k
                active = active[~fired]
                x = np.ascontiguousarray(x[~fired])
        if active.size:
            (logits,) = self.final.run(None, {"x": x})
            predictions[active] = softmax(logits).argmax(axis=1)
        return predictions, exit_index

    def _one(self, x: np.ndarray) -> tuple[int, int]:
        """One image: the same decisions as the batch path without its bookkeeping (which costs a tenth of an
        early-exit pass of a small network at batch 1)."""
        for k, segment in enumerate(self.segments):
            x, logits = segment.run(None, {"x": x})
            probs = softmax(logits)
            if self._fires(probs)[0]:
                return int(probs[0].argmax()), k
        (logits,) = self.final.run(None, {"x": x})
        return int(softmax(logits)[0].argmax()), self.num_exits - 1

    def _fires(self, probs: np.ndarray) -> np.ndarray:
        if self.policy == "confidence":
            return probs.max(axis=-1) >= self.threshold
        return normalised_entropy(probs) <= self.threshold

    def cnn(self, images: np.ndarray) -> np.ndarray:
        """The plain network's predictions."""
        (logits,) = self.whole.run(None, {"x": self._check(images)})
        return logits.argmax(axis=1).astype(np.int64)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Every exit's logits [E, B, K], the final head's last (all segments run on every image)."""
        x = self._check(images)
        outputs = []
        for segment in self.segments:
            x, logits = segment.run(None, {"x": x})
            outputs.append(logits)
        (logits,) = self.final.run(None, {"x": x})
        return np.stack([*outputs, logits])


def export_checkpoint(
    checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, ic_weights: str = "float32"
) -> Path:
    """Load a trained ``model.pt`` and export it (see :func:`export`)."""
    from sdn.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint, "cpu")
    return export(model, out_dir, meta=meta, ic_weights=ic_weights)
