"""Early exits on the host, measured: onnxruntime (1 thread) latency of the exported If-graph vs the same backbone
without exits, over a labelled test split, compared with a predicted expected latency. Writes JSON.

    python benchmarks/early_exit_latency.py --export-dir runs/NAME/export --inputs test.npz \
        [--predicted record.json] [--repeats 3] [--int8] [--out benchmarks/results/early_exit_latency.json]

--inputs: an .npz with `x` (N, C, H, W) float32 (and optionally `y`), the test split of the run.
--predicted: a JSON object holding `expected_latency_ms`, or an archive record holding `latency_expected_s`.
"Backbone without exits" is the static graph cut down to its final logits (onnx.utils.Extractor), so every
intermediate head drops out: the network a single-exit design would deploy. Both models are timed in the same run,
sample by sample, alternating their order; the ratio is the figure to quote, not the absolute times.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.utils

from edgenas.errors import EdgenasError
from edgenas.export.checks import check_onnx, load_onnx, ort_session, run_early_exit
from edgenas.export.exits_json import read_exits_json


def backbone_without_exits(static_model: onnx.ModelProto, n_exits: int) -> onnx.ModelProto:
    """The static all-exits graph reduced to the path input -> final logits (intermediate heads removed)."""
    final = f"logits_{n_exits - 1}"
    if final not in {o.name for o in static_model.graph.output}:
        raise EdgenasError(f"the static model has no output {final}", "re-run `edgenas export`")
    cut = onnx.utils.Extractor(static_model).extract_model([static_model.graph.input[0].name], [final])
    return check_onnx(cut, "backbone without exits")


def _time_runs(sess, name: str, x: np.ndarray) -> float:
    t0 = time.perf_counter_ns()
    sess.run(None, {name: x})
    return (time.perf_counter_ns() - t0) / 1e6


def _summary(ms: np.ndarray) -> dict:
    return {"mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90))}


def predicted_expected_ms(path: Path) -> float:
    doc = json.loads(Path(path).read_text())
    if "expected_latency_ms" in doc:
        return float(doc["expected_latency_ms"])
    if "latency_expected_s" in doc:
        return float(doc["latency_expected_s"]) * 1e3
    raise EdgenasError(f"{path} holds neither expected_latency_ms nor latency_expected_s",
                       "pass an archive record of the candidate or {\"expected_latency_ms\": ...}")


def predict_with_target(export_dir: Path, backbone: onnx.ModelProto, exits: np.ndarray, target: str) -> dict:
    """The cost model's figures for the measured exit shares: expected If-graph latency and backbone latency."""
    from edgenas import cost
    from edgenas.targets import load_target
    t = load_target(target)
    per_exit = cost.predict_latency(cost.from_onnx(load_onnx(Path(export_dir) / "model.onnx")), t).per_exit_s
    shares = np.bincount(exits, minlength=len(per_exit)) / len(exits)
    backbone_s = cost.predict_latency(cost.from_onnx(backbone), t).worst_s
    expected_s = float(np.dot(shares, per_exit))
    return {"target": t.name, "target_file": t.source_path, "per_exit_ms": [v * 1e3 for v in per_exit],
            "expected_latency_ms": expected_s * 1e3, "backbone_no_exits_ms": backbone_s * 1e3,
            "ratio": expected_s / backbone_s}


def measure_latency(export_dir: Path, x: np.ndarray, repeats: int = 3, threads: int = 1, int8: bool = False,
                    predicted_ms: float | None = None, y: np.ndarray | None = None, target: str | None = None) -> dict:
    """Per-sample latency (median over repeats) of the If-graph(s) and of the backbone without exits."""
    export_dir = Path(export_dir)
    doc = read_exits_json(export_dir)
    files = doc.get("files") or {"model": "model.onnx", "static": "model.static.onnx", "int8": "model.int8.onnx"}
    x = np.ascontiguousarray(x, dtype=np.float32)
    if tuple(x.shape[1:]) != tuple(doc["input_shape"][1:]):
        raise EdgenasError(f"inputs have shape {list(x.shape)}, the export expects [N, {doc['input_shape'][1:]}]",
                           "pass the test split of the run the export came from")
    backbone = backbone_without_exits(load_onnx(export_dir / files["static"]), doc["n_exits"])
    models = {"if_graph": ort_session(export_dir / files["model"], threads=threads),
              "backbone_no_exits": ort_session(backbone, threads=threads)}
    if int8:
        models["if_graph_int8"] = ort_session(export_dir / files["int8"], threads=threads)
    name = models["if_graph"].get_inputs()[0].name
    logits_if, exits = run_early_exit(models["if_graph"], x)  # also the warm-up
    for sess in models.values():
        sess.run(None, {name: x[:1]})
    times = {k: np.zeros((repeats, len(x))) for k in models}
    order = list(models)
    for r in range(repeats):
        for k in range(len(x)):
            sample = x[k: k + 1]
            for key in (order if (r + k) % 2 == 0 else order[::-1]):  # alternate so drift hits both alike
                times[key][r, k] = _time_runs(models[key], name, sample)
    per_sample = {k: np.median(v, axis=0) for k, v in times.items()}
    result = {key: _summary(v) for key, v in per_sample.items()}
    result["if_graph"]["per_exit"] = [
        {"exit": i, "share": float((exits == i).mean()),
         "mean_ms": float(per_sample["if_graph"][exits == i].mean()) if (exits == i).any() else None}
        for i in range(doc["n_exits"])]
    speedup = result["backbone_no_exits"]["mean_ms"] / result["if_graph"]["mean_ms"]
    accuracy = None
    if y is not None:
        logits_bb = np.concatenate([models["backbone_no_exits"].run(None, {name: x[k:k + 1]})[0] for k in range(len(x))])
        accuracy = {"if_graph": float((logits_if.argmax(1) == y).mean()),
                    "backbone_no_exits": float((logits_bb.argmax(1) == y).mean())}
        accuracy["loss_points"] = 100 * (accuracy["backbone_no_exits"] - accuracy["if_graph"])
    model_pred = predict_with_target(export_dir, backbone, exits, target) if target else None
    if model_pred is not None and predicted_ms is None:
        predicted_ms = model_pred["expected_latency_ms"]
    return {
        "benchmark": "early_exit_latency",
        "export_dir": str(export_dir),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "runtime": f"onnxruntime {__import__('onnxruntime').__version__}, CPU EP, {threads} thread(s)",
        "n_samples": int(len(x)), "repeats": int(repeats),
        "thresholds": doc["thresholds"], "expected_macs": doc.get("expected_macs"),
        **result,
        "speedup_vs_backbone": float(speedup),
        "if_over_backbone": float(1 / speedup),
        "accuracy": accuracy,
        "cost_model": model_pred,
        "predicted_expected_latency_ms": predicted_ms,
        "measured_over_predicted": (result["if_graph"]["mean_ms"] / predicted_ms) if predicted_ms else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export-dir", required=True, type=Path)
    p.add_argument("--inputs", required=True, type=Path, help=".npz with x (N, C, H, W) [and y]")
    p.add_argument("--predicted", type=Path, help="JSON with expected_latency_ms or latency_expected_s")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--int8", action="store_true", help="also time model.int8.onnx")
    p.add_argument("--target", help="target (name or calibrated .toml) whose cost model predicts the latencies")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/early_exit_latency.json"))
    a = p.parse_args(argv)
    try:
        with np.load(a.inputs) as npz:
            x = npz["x"]
            y = npz["y"] if "y" in npz else None
        predicted = predicted_expected_ms(a.predicted) if a.predicted else None
        result = measure_latency(a.export_dir, x, repeats=a.repeats, threads=a.threads, int8=a.int8,
                                 predicted_ms=predicted, y=y, target=a.target)
    except EdgenasError as e:
        print(e.line())
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"If-graph {result['if_graph']['mean_ms']:.3f} ms, backbone without exits "
          f"{result['backbone_no_exits']['mean_ms']:.3f} ms, speedup x{result['speedup_vs_backbone']:.2f} -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
