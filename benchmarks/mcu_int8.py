"""int8 on Cortex-M: the default run's exported member and the MLPerf Tiny reference architectures, built in int8
and fp32 firmware and run under QEMU.

    python benchmarks/mcu_int8.py [--export runs/demo/export] [--target cortex-m7] [--models resnet8,ds_cnn_s,...]

Models: the exported member of the default run (`make demo` writes runs/demo/export; skipped with a note when it is
missing) and the four MLPerf Tiny v1 reference architectures rebuilt from their public descriptions
(benchmarks/foreign_models.py: ResNet-8 IC 3x32x32, DS-CNN-S KWS 1x49x10, MobileNetV1-0.25 VWW 3x96x96, FC
autoencoder AD 640), random weights (seeded), exported to float ONNX and quantised by onnxruntime's own
`quant_pre_process` + `quantize_static` (QDQ, int8 activations, per-channel int8 weights) on 64 standard-normal inputs. The default member
is compiled from its export folder (`stages_int8/` from `edgenas export`) with thresholds that never fire, so every
stage runs.

Per model and dtype (written to benchmarks/results/mcu_int8.json):
- instructions/MAC: QEMU -icount instructions of one inference (mean over the embedded inputs) / the cost model's
  MACs (goal <= 1.0 on Cortex-M7 for int8; the MLPerf Tiny anchors are 1.0-1.6 cycles/MAC for the best vendors);
- flash (image less the embedded test inputs) and RAM from the linker, against fp32 (goal int8 flash <= 0.35x) and
  against the cost model's prediction for the same dtype (goal within +-5%);
- agreement with onnxruntime on the same QDQ model: the share of inputs with the same exit (goal 100%) and the
  largest logit difference in quantisation steps (goal <= 1);
- latency: the cost model's prediction for the target against instructions x the target's cpi / clock (goal within
  +-10%).
QEMU counts instructions, not cycles: the latencies are estimates, not measurements.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

N_CALIB = 64
N_TEST = 8


def mlperf_models(work: Path, names) -> list[dict]:
    """Float and QDQ ONNX of the MLPerf Tiny architectures named, plus their test inputs."""
    import numpy as np
    import onnx

    from foreign_models import mlperf_tiny_specs
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, samples):
            self.items = iter([{"x": s[None]} for s in samples])

        def get_next(self):
            return next(self.items, None)

    out = []
    for spec in mlperf_tiny_specs():
        if spec.name not in names:
            continue
        fp32 = work / f"{spec.name}.onnx"
        export_folded(spec, fp32)
        onnx.checker.check_model(onnx.load(str(fp32)))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((N_CALIB + N_TEST, *spec.input_shape)).astype(np.float32)
        qdq, prepped = work / f"{spec.name}.qdq.onnx", work / f"{spec.name}.prepped.onnx"
        quant_pre_process(str(fp32), str(prepped))  # onnxruntime's recommended pre-processing (folds constants)
        quantize_static(str(prepped), str(qdq), Reader(x[:N_CALIB]), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
        out.append({"name": spec.name, "arch": spec.arch, "float32": fp32, "int8": qdq, "x": x[N_CALIB:]})
    return out


def export_folded(spec, path: Path) -> None:
    """foreign_models.export_onnx, with every BatchNorm1d folded into the Linear before it first (the exporter folds
    BatchNorm2d into convolutions itself; the FC autoencoder's Linear+BatchNorm1d pairs it leaves, and no int8
    deployment keeps a BatchNormalization of its own)."""
    import warnings

    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_linear_bn_eval

    from foreign_models import OPSET, build_module
    net = build_module(spec)
    if isinstance(net, nn.Sequential):
        layers = list(net)
        for i in range(len(layers) - 1):
            if isinstance(layers[i], nn.Linear) and isinstance(layers[i + 1], nn.BatchNorm1d):
                layers[i], layers[i + 1] = fuse_linear_bn_eval(layers[i], layers[i + 1]), nn.Identity()
        net = nn.Sequential(*layers).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, *spec.input_shape),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["x"], output_names=["logits"])


def member_model(export_dir: Path, work: Path) -> dict:
    """The default run's exported member with thresholds that never fire (every stage runs)."""
    import numpy as np

    from mcu_footprint import no_exit_copy
    copy = no_exit_copy(export_dir, work)
    doc = json.loads((copy / "exits.json").read_text())
    x = np.random.default_rng(0).standard_normal((N_TEST, *doc["input_shape"][1:])).astype(np.float32)
    meta = doc.get("meta", {})
    arch = f"{meta.get('run', '?')} #{meta.get('candidate', '?')}: {meta.get('description', '')}"  # no local paths
    return {"name": "default_member", "arch": arch, "float32": copy,
            "int8": copy, "x": x}


def build_and_run(model: dict, dtype: str, target, work: Path) -> dict:
    from edgenas.compile import compile_mcu
    from edgenas.errors import EdgenasError
    from edgenas.profile import profile_qemu

    out = work / f"{model['name']}_{dtype}"
    t0 = time.perf_counter()
    try:
        report = compile_mcu(model[dtype], target, out, dtype=dtype, test_inputs=model["x"], build_board=False,
                             keep_failed=True).to_dict()
    except EdgenasError:  # over a budget: kept (keep_failed) and still measured; firmware.json says by how much
        if not (out / "firmware.json").is_file():
            raise
        report = json.loads((out / "firmware.json").read_text())
    build_s = time.perf_counter() - t0
    profile = profile_qemu(out, target)
    n_stages = report["n_stages"]
    instructions = float(sum(profile["stages"][str(s)]["instructions"]["mean"] for s in range(n_stages)))
    pred = report.get("predicted") or {}
    macs = (report.get("macs_per_exit") or pred.get("macs_per_exit") or [0])[-1]
    sizes = report["sizes"]
    flash = sizes["flash_bytes"] - sizes.get("flash_parts", {}).get("test_data", 0)
    estimated_s = instructions * target.cpi / target.clock_hz
    check = profile["check"]
    row = {"dtype": dtype, "fits": report["fits"], "excess_bytes": report["excess"], "build_s": round(build_s, 1),
           "macs": int(macs),
           "instructions": instructions, "instructions_per_mac": instructions / macs if macs else None,
           "flash_bytes": int(flash), "ram_bytes": int(sizes["ram_bytes"]),
           "weight_bytes": int(report["weight_bytes"]), "arena_bytes": int(report["arena_bytes"]),
           "flash_parts": sizes.get("flash_parts"), "ram_parts": sizes.get("ram_parts"),
           "predicted_flash_bytes": pred.get("flash_bytes"), "predicted_ram_bytes": pred.get("peak_sram_bytes"),
           "flash_vs_prediction": _rel(flash, pred.get("flash_bytes")),
           "ram_vs_prediction": _rel(sizes["ram_bytes"], pred.get("peak_sram_bytes")),
           "qemu_estimated_latency_s": estimated_s, "predicted_latency_s": pred.get("latency_worst_s"),
           "latency_prediction_error": _rel(pred.get("latency_worst_s"), estimated_s),
           "exit_agreement": check["exit_agreement"], "max_abs_logit_diff": check["max_abs_diff"],
           "logit_tolerance": check["tolerance"],
           "max_logit_diff_in_steps": check["max_abs_diff"] / check["tolerance"] if dtype == "int8" else None,
           "check_passed": check["passed"], "int8": report.get("int8")}
    return row


def _rel(measured, predicted):
    return (measured - predicted) / predicted if measured is not None and predicted else None


def main(argv=None) -> int:
    from foreign_models import MLPERF_TINY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, default=Path("runs/demo/export"),
                    help="the default run's export folder (`make demo` writes runs/demo/export)")
    ap.add_argument("--target", default="cortex-m7")
    ap.add_argument("--models", default=",".join(MLPERF_TINY), help="MLPerf Tiny models, comma-separated")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mcu_int8.json")
    args = ap.parse_args(argv)

    import torch

    from edgenas.targets import load_target
    target = load_target(args.target)
    work = Path(tempfile.mkdtemp(prefix="edgenas-mcu-int8-"))
    notes = []
    try:
        models = []
        if (args.export / "exits.json").is_file():
            models.append(member_model(args.export, work))
        else:
            notes.append(f"default member skipped: {args.export}/exits.json not found (run `make demo` first)")
        models += mlperf_models(work, set(args.models.split(",")))
        rows = []
        for model in models:
            result = {"model": model["name"], "arch": model["arch"]}
            for dtype in ("float32", "int8"):
                result[dtype] = build_and_run(model, dtype, target, work)
            fp32, int8 = result["float32"], result["int8"]
            result["int8_flash_vs_fp32"] = int8["flash_bytes"] / fp32["flash_bytes"]
            result["int8_weights_vs_fp32"] = int8["weight_bytes"] / fp32["weight_bytes"]
            result["int8_ram_vs_fp32"] = int8["ram_bytes"] / fp32["ram_bytes"]
            rows.append(result)
            _print(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc = {"benchmark": "mcu_int8", "target": target.name, "cpi": target.cpi, "clock_hz": target.clock_hz,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
           "n_calibration_inputs": N_CALIB, "n_test_inputs": N_TEST, "notes": notes, "models": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    for note in notes:
        print("note:", note)
    print(f"wrote {args.out}")
    return 0


def _print(r: dict) -> None:
    print(f"{r['model']} ({r['arch']})")
    for dtype in ("float32", "int8"):
        d = r[dtype]
        steps = f", max diff {d['max_logit_diff_in_steps']:.2f} steps" if d["max_logit_diff_in_steps"] is not None else ""
        lat = d["latency_prediction_error"]
        print(f"  {dtype:7s} {d['instructions_per_mac']:.2f} instr/MAC ({d['instructions']:.0f} / {d['macs']}), "
              f"flash {d['flash_bytes']} B ({_pct(d['flash_vs_prediction'])} vs cost model), RAM {d['ram_bytes']} B "
              f"({_pct(d['ram_vs_prediction'])}), latency predicted {_pct(lat)} vs QEMU estimate, "
              f"exits agree {d['exit_agreement']:.0%}{steps}, build {d['build_s']} s")
    print(f"  int8/fp32: flash {r['int8_flash_vs_fp32']:.2f}x, weights {r['int8_weights_vs_fp32']:.2f}x, "
          f"RAM {r['int8_ram_vs_fp32']:.2f}x")


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:+.1%}"


if __name__ == "__main__":
    sys.exit(main())
