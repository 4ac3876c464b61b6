"""Supernet training throughput per device: training images per second, CPU vs every CUDA GPU torch sees.

The default search's supernet recipe (mbv3 on mnist5k, SupernetConfig defaults: batch 64, the largest subnet plus 3
random subnets per step after the warm-up), trained through `train_supernet(..., device=...)`, the path
`edgenas search --device` takes. `--steps` steps are timed after `--warmup` untimed ones (CUDA context, kernels
chosen); images/s counts each batch once (the subnets of a step see the same images). The CPU runs with the
supernet's thread count (2). The steps are all past the label-only warm-up fraction, so every timed step trains the
largest subnet and 3 random ones.

    python benchmarks/device_throughput.py                  # writes benchmarks/results/device_throughput.json
    python benchmarks/device_throughput.py --devices cpu --steps 20 --out /tmp/t.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def images_per_second(device: str, steps: int, warmup: int, seed: int) -> dict:
    from edgenas.data import load_dataset
    from edgenas.spaces import create_space
    from edgenas.train.supernet import SupernetConfig, train_supernet
    data = load_dataset("mnist5k")
    space = create_space("mbv3")
    # warmup_fraction 0: every step is a full sandwich step (the steady state of the default recipe)
    cfg = replace(SupernetConfig(), warmup_fraction=0.0)
    times = {}
    for n in (warmup, warmup + steps):
        torch.manual_seed(seed)
        supernet = space.supernet(data.in_channels, data.n_classes)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        train_supernet(space, supernet, data, replace(cfg, steps=n), seed, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        times[n] = time.perf_counter() - t0
    seconds = times[warmup + steps] - times[warmup]  # the difference removes set-up and the first steps
    return {"device": device, "name": torch.cuda.get_device_name(device) if device.startswith("cuda") else
            f"CPU {torch.backends.cpu.get_cpu_capability()}, {cfg.threads} threads",
            "steps": steps, "batch_size": cfg.batch_size, "subnets_per_step": 1 + cfg.n_random,
            "seconds": round(seconds, 3), "images_per_second": round(steps * cfg.batch_size / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    parser.add_argument("--devices", default=",".join(default), help="comma-separated (default: cpu and every GPU)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "device_throughput.json"))
    args = parser.parse_args()
    from edgenas.runtime import resolve_device
    rows = []
    for spec in args.devices.split(","):
        row = images_per_second(resolve_device(spec), args.steps, args.warmup, args.seed)
        rows.append(row)
        print(f"{row['device']:8s} {row['images_per_second']:9.1f} images/s ({row['name']}; {row['steps']} steps in "
              f"{row['seconds']:.1f} s)", flush=True)
    cpu = next((r for r in rows if r["device"] == "cpu"), None)
    doc = {"benchmark": "device_throughput", "machine": {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                                         "python": platform.python_version(), "torch": torch.__version__,
                                                         "cuda_gpus": torch.cuda.device_count()},
           "rows": rows,
           "speedup_over_cpu": {r["device"]: round(r["images_per_second"] / cpu["images_per_second"], 2)
                                for r in rows if cpu is not None and r is not cpu}}
    if not torch.cuda.device_count():
        doc["note"] = "no CUDA GPU on this machine: CPU only"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
