"""Checks on exported models: ONNX checker, loading/saving, onnxruntime runs (batch 1), comparison with PyTorch,
ORT profiling.

Every failure caused by the user's files or arrays (corrupt ONNX, wrong input shape) raises EdgenasError.
"""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from edgenas.agreement import Agreement, agreement
from edgenas.errors import EdgenasError
from edgenas.export.exits_json import ExitMetrics
from edgenas.fileio import atomic_write

if TYPE_CHECKING:
    import onnxruntime

    from edgenas.nn.early_exit import EarlyExitNet

IF_OUTPUTS = ("logits", "exit_index")


def check_onnx(model: onnx.ModelProto, what: str = "model") -> onnx.ModelProto:
    """onnx.checker with full shape inference; EdgenasError names the model on failure."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise EdgenasError(f"{what} is not a valid ONNX model: {' '.join(str(e).split())[:300]}",
                           "re-export it with `edgenas export`")
    return model


def load_onnx(path: Path, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX file; a missing, corrupt or invalid file raises EdgenasError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EdgenasError(f"{path} does not exist", "check the path or re-run `edgenas export`")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise EdgenasError(f"{path} is not an ONNX file ({type(e).__name__})", "re-export it with `edgenas export`")
    if not model.graph.node and not model.graph.output:
        raise EdgenasError(f"{path} is not an ONNX file (no graph)", "re-export it with `edgenas export`")
    return check_onnx(model, str(path)) if check else model


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Save an ONNX model atomically (fileio.atomic_write)."""
    return atomic_write(path, model.SerializeToString())


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of a graph, including the nodes of If/Loop/Scan subgraphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_nodes(g)


def count_ops(model: onnx.ModelProto) -> Counter:
    """Op-type histogram over the whole model, subgraphs included."""
    return Counter(n.op_type for n in iter_nodes(model.graph))


def ort_session(model: Path | onnx.ModelProto, threads: int = 1, profile_prefix: str | None = None,
                ) -> "onnxruntime.InferenceSession":
    """A CPU onnxruntime session (one intra-op thread by default: comparable timings, polite on shared machines)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    if not isinstance(model, onnx.ModelProto) and not Path(model).is_file():
        raise EdgenasError(f"{model} does not exist", "check the path or re-run `edgenas export`")
    try:
        return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises pybind error classes (InvalidGraph, InvalidProtobuf, Fail)
        name = model.graph.name if isinstance(model, onnx.ModelProto) else str(model)
        raise EdgenasError(f"onnxruntime cannot load {name}: {str(e).strip().splitlines()[0]}",
                           "re-export the model with `edgenas export`")


def _batch1_inputs(sess: "onnxruntime.InferenceSession", x: np.ndarray) -> tuple[str, np.ndarray]:
    """Validate x (N, *sample shape) against the session's batch-1 input; returns (input name, float32 x)."""
    inp = sess.get_inputs()[0]
    want = tuple(inp.shape[1:])
    x = np.asarray(x)
    if x.ndim != len(inp.shape) or tuple(x.shape[1:]) != want:
        raise EdgenasError(f"input of shape {list(x.shape)} does not fit the model input {inp.name} "
                           f"[N, {', '.join(map(str, want))}]",
                           "pass samples with the network's input shape (C, H, W) stacked on axis 0")
    return inp.name, np.ascontiguousarray(x, dtype=np.float32)


def run_early_exit(sess: "onnxruntime.InferenceSession", x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run an If-graph sample by sample: (logits (N, K), exit index (N,))."""
    name, x = _batch1_inputs(sess, x)
    logits, exits = [], []
    for k in range(x.shape[0]):
        lg, ex = sess.run(list(IF_OUTPUTS), {name: x[k: k + 1]})
        logits.append(lg[0])
        exits.append(int(ex.reshape(-1)[0]))
    return np.stack(logits) if logits else np.zeros((0, 0), np.float32), np.asarray(exits, dtype=np.int64)


def run_static(sess: "onnxruntime.InferenceSession", x: np.ndarray) -> dict[str, np.ndarray]:
    """Run the static graph sample by sample: output name -> stacked outputs (N, ...)."""
    name, x = _batch1_inputs(sess, x)
    names = [o.name for o in sess.get_outputs()]
    rows = [sess.run(names, {name: x[k: k + 1]}) for k in range(x.shape[0])]
    return {n: np.concatenate([r[j] for r in rows]) for j, n in enumerate(names)}


def exit_metrics(logits: np.ndarray, exits: np.ndarray, labels: np.ndarray, n_exits: int) -> ExitMetrics:
    """Overall accuracy, share of samples per exit and accuracy of the samples leaving at each exit."""
    labels = np.asarray(labels).reshape(-1)
    correct = np.asarray(logits).argmax(axis=1) == labels
    n = len(labels)
    rates, accs = [], []
    for i in range(n_exits):
        sel = exits == i
        rates.append(float(sel.mean()) if n else 0.0)
        accs.append(float(correct[sel].mean()) if sel.any() else None)
    return ExitMetrics(n_samples=n, accuracy=float(correct.mean()) if n else 0.0, exit_rates=tuple(rates),
                       exit_accuracies=tuple(accs))


def torch_early_exit(net: "EarlyExitNet", x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch eager reference, one sample at a time as on the device: (logits (N, K), exit index (N,))."""
    import torch

    was_training = net.training
    net.eval()
    logits, exits = [], []
    try:
        with torch.no_grad():
            for k in range(x.shape[0]):
                lg, ex = net(torch.from_numpy(np.ascontiguousarray(x[k: k + 1], dtype=np.float32)))
                logits.append(lg[0].numpy())
                exits.append(int(ex[0]))
    finally:
        net.train(was_training)
    return np.stack(logits), np.asarray(exits, dtype=np.int64)


def compare_with_torch(net: "EarlyExitNet", sess: "onnxruntime.InferenceSession", x: np.ndarray,
                       ) -> tuple[Agreement, np.ndarray, np.ndarray]:
    """Run the If-graph and `net(x)` per sample; returns the agreement and the ORT (logits, exits)."""
    ort_logits, ort_exits = run_early_exit(sess, x)
    ref_logits, ref_exits = torch_early_exit(net, x)
    return agreement(ort_logits, ort_exits, ref_logits, ref_exits), ort_logits, ort_exits


class NodeRun(NamedTuple):
    """One node execution in an ORT profile. Nodes inside If branches appear under their own names."""

    name: str
    op: str
    dur_us: float


def profile_ort_nodes(model_path: Path, inputs: np.ndarray | Mapping[str, np.ndarray], threads: int = 1,
                      runs: int = 1) -> list[NodeRun]:
    """Run a model `runs` times with ORT profiling on; every node kernel that ran, in order.

    `inputs` is one batch for the model's only input, or a dict input name -> array. ORT may fuse or re-layout
    nodes (FusedConv, NCHWc reorders), so names are those of the optimised graph; they keep the original prefix.
    """
    load_onnx(model_path)  # a corrupt file fails here, before onnxruntime logs about an unwritable profile
    with tempfile.TemporaryDirectory(prefix="edgenas-prof-") as tmp:
        sess = ort_session(model_path, threads=threads, profile_prefix=str(Path(tmp) / "ort"))
        if isinstance(inputs, Mapping):
            feed = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        else:
            name, x = _batch1_inputs(sess, inputs)
            feed = {name: x}
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    out = []
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            out.append(NodeRun(e["name"][: -len("_kernel_time")], e.get("args", {}).get("op_name", ""),
                               float(e.get("dur", 0.0))))
    return out


def stage_prefix_of(node_name: str) -> int | None:
    """Stage index of a node in a composed graph (`s{i}_...`), None for exit-logic nodes."""
    if node_name.startswith("s") and "_" in node_name:
        head = node_name[1: node_name.index("_")]
        if head.isdigit():
            return int(head)
    return None


def stages_in_profile(runs: Sequence[NodeRun]) -> set[int]:
    """Which stages had at least one node run."""
    return {s for s in (stage_prefix_of(r.name) for r in runs) if s is not None}
