"""How well the calibrated latency model predicts onnxruntime on this host (-> benchmarks/results/costmodel_host.json).

    nice -n 10 python benchmarks/costmodel_host.py        # the full run, on a quiet machine: ~10 min on 2 cores
                                                          # (up to ~30 min when groups run into --group-seconds)
    python benchmarks/costmodel_host.py --reuse           # re-fit on the cached measurements (1-2 min)
    python benchmarks/costmodel_host.py --quick           # smoke run (~20 s): 16 own-space models, 8 random blocks,
                                                          # foreign at 32 px, loose timing; *_quick*.json files
    options: [--mbv3 220] [--nb201 30] [--calib 100] [--random-blocks 60] [--resolutions 32 64 96] [--seed 0]
             [--rel-ci 0.02] [--group-size 24] [--group-seconds 40] [--models-dir DIR] [--processes 2]
             [--no-profiles]

Measured latencies are written to benchmarks/results/costmodel_host_measurements.json (--quick: *_quick_*); `--reuse`
reads them back instead of measuring (the models are re-exported deterministically from the seed, or taken from
--models-dir when it holds them), so the fit can be iterated on without re-measuring.

1. Models, exported to ONNX (opset 18, batch 1, random weights), the own-space ones in this process while a pool of
   `--processes - 1` workers exports the others (export only: nothing is timed while it runs):
   - own space: random `mbv3` backbones (no exits) and `nb201` networks (backbone + final head);
   - random blocks (benchmarks/foreign_models.py): nn-Meter-style random nets mixing the operator kinds of the foreign
     families (grouped/depthwise convs, squeeze-excite, SiLU/HardSwish, channel shuffle, concat branches, pools,
     MLPs) without being any of them; calibration material only (`--random-blocks 0`: none);
   - foreign families (benchmarks/foreign_models.py): torchvision MobileNetV2/V3-Small/V3-Large, ShuffleNetV2-0.5,
     SqueezeNet1.1, MNASNet0.5, ResNet-18, EfficientNet-B0, RegNetX-400MF at --resolutions px, and the MLPerf Tiny
     reference models (ResNet-8, DS-CNN-S, MobileNetV1-0.25 VWW, FC autoencoder). **Never in the calibration set.**
2. Latency: onnxruntime CPU, 1 intra-op thread, one process, by the protocol of edgenas.profile.timing
   (measure_interleaved): models in groups of --group-size, each group timed in interleaved rounds (a fresh shuffled
   order every round) until every median's 95 % confidence interval is within +-rel_ci, or --group-seconds pass;
   the estimate is the median, or p10 when the spread is one-sided. Two such passes over all models (the groups
   drawn anew): the measured latency is the mean of the two estimates, and the noise floor is reported both as the
   median |a/b - 1| between the passes and as timing.noise_floor (median CI half-width).
3. Calibration set: --calib own-space models (the same split as before random blocks existed) + the random-block
   models, through the library path `edgenas calibrate` uses: (a) end-to-end CSV (model, latency_ms),
   (b) onnxruntime per-node profiles (MODEL.onnx=PROFILE.json); with random blocks, (c) the CSV of the own-space
   models alone, as the ablation (the CSVs hold both passes as repeated rows, and a `threads` column). The
   override target is loaded with `load_target` and every held-out model
   predicted with `cost.predict_latency(cost.from_onnx(model), target)`, i.e. what search and `analyze` use.
4. Held-out figures, per variant: own space (goal >= 95 % within +-10 %) and the foreign families (goal >= 90 %
   within +-10 %), pooled and per family: % within +-10 % / +-5 %, Kendall tau, interval coverage when the model has
   a prediction interval, next to a MACs-only baseline (a + b * MACs fitted on the same calibration set; its tau is
   the ranking by MACs).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgenas.fileio import json_finite

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import foreign_models  # noqa: E402  (a sibling script, not a package)

GOAL_OWN_WITHIN_10PCT = 95.0
GOAL_FOREIGN_WITHIN_10PCT = 90.0
HOST_MAX_MACS = 60e6  # random-block nets up to this size: the own-space models take 0.02-0.4 ms here


class Backbone:
    """The network without intermediate exits: segments, then the final head."""

    @staticmethod
    def wrap(net):
        import torch

        class _B(torch.nn.Module):
            def __init__(self, n):
                super().__init__()
                self.segments, self.head = n.segments, n.heads[-1]

            def forward(self, x):
                for s in self.segments:
                    x = s(x)
                return self.head(x)
        return _B(net).eval()


def build_models(out_dir: Path, n_mbv3: int, n_nb201: int, seed: int) -> list[dict]:
    """Random own-space architectures (mbv3 backbones, nb201 networks), exported to out_dir."""
    import torch

    from edgenas.spaces import create_space
    from edgenas.spaces.nb201 import EDGES, OPS, Nb201Arch, build_early_exit_net

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    space = create_space("mbv3")
    supernet = space.supernet(3, 10)
    specs = []
    seen = set()
    while len(specs) < n_mbv3:
        x = space.sample(rng)
        x[-3:] = 0  # no intermediate exits: the backbone and its final head
        key = space.key(x)
        if key in seen:
            continue
        seen.add(key)
        arch = space.decode(x)
        specs.append(("mbv3", arch.describe(), space.build(arch, supernet), arch.resolution))
    while len(specs) < n_mbv3 + n_nb201:
        ops = [OPS[i] for i in rng.integers(0, len(OPS), len(EDGES))]
        try:
            arch = Nb201Arch.from_indices([OPS.index(o) for o in ops])
            if not arch.is_connected():
                continue
            res = int(rng.choice([16, 24, 32]))
            net = build_early_exit_net(arch, 10, 3, res, C=int(rng.choice([8, 16])), N=int(rng.choice([1, 2])))
        except Exception:  # noqa: BLE001  (an unconnected or degenerate cell: draw again)
            continue
        specs.append(("nb201", arch.to_string(), net, res))
    models = []
    for i, (family, desc, net, res) in enumerate(specs):
        path = out_dir / f"{family}_{i:03d}.onnx"
        with torch.no_grad():
            torch.onnx.export(Backbone.wrap(net.eval()), (torch.zeros(1, 3, res, res),), str(path), dynamo=False,
                              opset_version=18, input_names=["x"], output_names=["logits"])
        models.append({"family": family, "arch": desc, "path": str(path), "resolution": res})
    return models


# ---------------------------------------------------------------------------------------------- onnxruntime
def session(path: str, profile_prefix: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def feed_for(sess) -> dict:
    """A fixed random input of the model's own shape (batch 1)."""
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    return {inp.name: np.random.default_rng(0).random(shape, dtype=np.float32)}


def ort_profile(path: str, prof_dir: Path, runs: int = 30) -> str:
    sess = session(path, str(prof_dir / Path(path).stem))
    feed = feed_for(sess)
    for _ in range(runs):
        sess.run(None, feed)
    return sess.end_profiling()


def measure_models(models: list[dict], args, seed: int) -> dict[str, dict]:
    """One pass of the measuring protocol over every model: {file name: TimingResult as a dict}.

    The one place the protocol is chosen: edgenas.profile.timing.measure_interleaved over groups of models (all
    sessions of a group open at once, so that its rounds interleave them), one process, one ORT thread."""
    from edgenas.profile.timing import measure_interleaved

    order = np.random.default_rng(seed).permutation(len(models))
    out = {}
    for start in range(0, len(order), args.group_size):
        group = [models[i] for i in order[start:start + args.group_size]]
        calls = {}
        for m in group:
            sess = session(m["path"])
            feed = feed_for(sess)
            calls[Path(m["path"]).name] = (lambda s=sess, f=feed: s.run(None, f))
        results = measure_interleaved(calls, rel_ci=args.rel_ci, min_rounds=args.min_rounds,
                                      max_rounds=args.max_rounds, max_seconds=args.group_seconds,
                                      retire_converged=True, seed=seed + start)
        out.update({name: r.to_dict() for name, r in results.items()})
        del calls
    return out


def timing_protocol(args) -> dict:
    from edgenas.profile.timing import protocol
    return {**protocol(rel_ci=args.rel_ci, min_rounds=args.min_rounds, max_rounds=args.max_rounds,
                       max_seconds=args.group_seconds),
            "group_size": args.group_size, "passes": 2,
            "measured": "mean of the two passes' estimates; noise floor: median |a/b - 1| between the passes"}


# ---------------------------------------------------------------------------------------------- models, cache
_KEY = ("seed", "mbv3", "nb201", "random_blocks", "resolutions")


def _key(args) -> dict:
    return {k: getattr(args, k) for k in _KEY}


def _models(where: Path, args) -> list[dict]:
    """The benchmark's models, exported to `where` (or taken from it when an earlier run left the same ones)."""
    specs = foreign_models.random_block_specs(args.random_blocks, args.seed, max_macs=HOST_MAX_MACS) + \
        foreign_models.foreign_specs(tuple(args.resolutions), args.seed)
    key = {**_key(args), "specs": foreign_models.specs_digest(specs)}
    index = where / "models.json"
    if index.is_file():
        doc = json.loads(index.read_text())
        if doc.get("key") == key and all(Path(m["path"]).is_file() for m in doc["models"]):
            return doc["models"]
    where.mkdir(parents=True, exist_ok=True)
    pending = foreign_models.PendingExport(specs, where, args.processes - 1).start() if args.processes > 1 else None
    own = build_models(where, args.mbv3, args.nb201, args.seed)
    others = pending.result() if pending else foreign_models.export_all(specs, where, 1)
    models = [{**m, "set": "own", "input_shape": [3, m["resolution"], m["resolution"]]} for m in own]
    models += [{"family": r["family"], "arch": r["arch"], "path": r["path"], "input_shape": r["input_shape"],
                "set": "random" if r["family"] == foreign_models.RANDOM_FAMILY else "foreign"} for r in others]
    index.write_text(json.dumps({"key": key, "models": models}, indent=1))
    return models


def _save(cache: Path, models: list[dict], args, ort_version: str) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    doc = {"what": "measured onnxruntime latencies of benchmarks/costmodel_host.py (re-used with --reuse)",
           "date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpu_count": os.cpu_count(),
           "runtime": f"onnxruntime {ort_version} CPUExecutionProvider, 1 thread", **_key(args),
           "protocol": timing_protocol(args),
           "models": [{"file": Path(m["path"]).name, "family": m["family"], "set": m["set"], "arch": m["arch"],
                       "input_shape": m["input_shape"], "latency_a_s": m["latency_a_s"],
                       "latency_b_s": m["latency_b_s"], "timing_a": m["timing_a"], "timing_b": m["timing_b"]}
                      for m in models]}
    cache.write_text(json.dumps(doc, indent=1))


def _reuse(cache: Path, models: list[dict]) -> str:
    """Latencies of `models` from the cache (matched by file name and architecture); its date."""
    if not cache.is_file():
        raise SystemExit(f"--reuse: {cache} not found; run once without --reuse to measure")
    doc = json.loads(cache.read_text())
    cached = {(c["file"], c["arch"]): c for c in doc["models"]}
    missing = [Path(m["path"]).name for m in models if (Path(m["path"]).name, m["arch"]) not in cached]
    if missing:
        raise SystemExit(f"--reuse: {cache} has no measurement of {len(missing)} of the {len(models)} models "
                         f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); it was measured with "
                         f"{', '.join(f'{k}={doc.get(k)}' for k in _KEY)}: pass those settings, or measure again")
    for m in models:
        c = cached[(Path(m["path"]).name, m["arch"])]
        m["latency_a_s"], m["latency_b_s"] = c["latency_a_s"], c["latency_b_s"]
        m["timing_a"], m["timing_b"] = c.get("timing_a"), c.get("timing_b")
    return doc.get("date", "?")


# ---------------------------------------------------------------------------------------------- scoring
def _calibrate_kwargs(device: str, ort_version: str) -> dict:
    return {"device": device, "runtime": "ort", "runtime_version": f"onnxruntime {ort_version} CPUExecutionProvider",
            "threads": 1}


def _score(models: list[dict], key: str) -> dict:
    from edgenas.cost.calibrate import accuracy

    ms = [m for m in models if key in m]
    if len(ms) < 1:
        return {"n": 0}
    out = accuracy([m["latency_s"] for m in ms], [m[key] for m in ms])
    if all(f"{key}_lo" in m for m in ms):
        out["interval_coverage_pct"] = 100.0 * float(np.mean([m[f"{key}_lo"] <= m["latency_s"] <= m[f"{key}_hi"]
                                                              for m in ms]))
    return out


def _groups(held_own: list[dict], foreign: list[dict]) -> dict[str, list[dict]]:
    groups = {"own": held_own, "foreign": foreign}
    for family in sorted({m["family"] for m in held_own + foreign}):
        groups[f"family:{family}"] = [m for m in held_own + foreign if m["family"] == family]
    return groups


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mbv3", type=int, default=220)
    ap.add_argument("--nb201", type=int, default=30)
    ap.add_argument("--calib", type=int, default=100, help="own-space models in the calibration set")
    ap.add_argument("--random-blocks", type=int, default=60,
                    help="random-block models added to the calibration set (0: none)")
    ap.add_argument("--resolutions", type=int, nargs="+", default=list(foreign_models.FOREIGN_RESOLUTIONS),
                    help="input sizes of the torchvision families (held out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", default="x86-host")
    ap.add_argument("--rel-ci", type=float, default=0.02, help="target half-width of each median's 95%% CI")
    ap.add_argument("--min-rounds", type=int, default=10)
    ap.add_argument("--max-rounds", type=int, default=200)
    ap.add_argument("--group-size", type=int, default=24, help="models interleaved together")
    ap.add_argument("--group-seconds", type=float, default=40.0, help="time limit of one group's rounds")
    ap.add_argument("--processes", type=int, default=2, help="processes exporting models (not measuring)")
    ap.add_argument("--no-profiles", action="store_true",
                    help="skip the onnxruntime per-node profile variant (its fit takes the longest)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 16 own-space models, 8 random blocks, foreign at 32 px, loose timing; writes "
                         "costmodel_host_quick*.json")
    ap.add_argument("--out", default=None)
    ap.add_argument("--measurements", default=None,
                    help="cache of the measured latencies (written after measuring, read with --reuse)")
    ap.add_argument("--reuse", action="store_true", help="take the latencies from --measurements, do not measure")
    ap.add_argument("--models-dir", default=None, help="keep the exported models here (reused when they match)")
    args = ap.parse_args(argv)
    if args.quick:
        args.mbv3, args.nb201, args.calib, args.random_blocks, args.resolutions = 12, 4, 10, 8, [32]
        args.rel_ci, args.min_rounds, args.max_rounds, args.group_seconds = 0.05, 5, 30, 4.0
    suffix = "_quick" if args.quick else ""
    results_dir = HERE / "results"
    out = Path(args.out) if args.out else results_dir / f"costmodel_host{suffix}.json"
    cache = Path(args.measurements) if args.measurements else results_dir / f"costmodel_host{suffix}_measurements.json"

    import onnxruntime as ort
    import torch

    from edgenas import cost
    from edgenas.api import calibrate
    from edgenas.cost.calibrate import ModelTotal, fit_macs_only, kendall_tau
    from edgenas.profile.timing import noise_floor
    from edgenas.targets import load_target

    torch.set_num_threads(1)
    t_start = time.time()
    work = Path(tempfile.mkdtemp(prefix="edgenas-costmodel-"))
    try:
        models = _models(Path(args.models_dir) if args.models_dir else work / "models", args)
        t_export = time.time() - t_start
        print(f"exported {len(models)} models in {t_export:.0f} s", file=sys.stderr)

        if args.reuse:
            print(f"reusing the latencies measured {_reuse(cache, models)} from {cache}", file=sys.stderr)
        else:
            for rep, seed in (("a", args.seed), ("b", args.seed + 1000)):  # the second pass is the re-measurement
                timings = measure_models(models, args, seed)
                for m in models:
                    m[f"timing_{rep}"] = timings[Path(m["path"]).name]
                    m[f"latency_{rep}_s"] = m[f"timing_{rep}"]["estimate"]
            _save(cache, models, args, ort.__version__)
        t_measure = time.time() - t_start - t_export
        not_analysable = {}
        for m in models:
            m["latency_s"] = 0.5 * (m["latency_a_s"] + m["latency_b_s"])
            try:
                g = cost.from_onnx(m["path"])
            except Exception as exc:  # noqa: BLE001  (a foreign model the front end cannot read is reported)
                not_analysable[Path(m["path"]).name] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            m["graph"] = g
            m["macs"] = cost.macs_per_exit(g)[-1]
            m["params"] = cost.total_params(g)
            m["n_layers"] = len(g.layers)
        pass_diff = [abs(m["latency_a_s"] / m["latency_b_s"] - 1.0) for m in models]
        timed = [m[f"timing_{p}"] for m in models for p in "ab" if m.get(f"timing_{p}")]
        ci_floor = noise_floor(timed) if timed else None
        print(f"measured in {t_measure:.0f} s; noise floor (passes) {100 * statistics.median(pass_diff):.2f}%"
              + (f", median CI half-width {100 * ci_floor:.2f}%" if ci_floor is not None else ""), file=sys.stderr)

        own = [m for m in models if m["set"] == "own"]
        order = np.random.default_rng(args.seed + 1).permutation(len(own))  # the split of the own-space models
        calib_own = [own[i] for i in order[:args.calib] if "graph" in own[i]]
        held_own = [own[i] for i in order[args.calib:] if "graph" in own[i]]
        random_blocks = [m for m in models if m["set"] == "random" and "graph" in m]
        foreign = [m for m in models if m["set"] == "foreign" and "graph" in m]
        calib = calib_own + random_blocks
        calib_ids = {id(m) for m in calib}
        held = held_own + foreign
        groups = _groups(held_own, foreign)
        base = load_target(args.target)
        device = f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        kwargs = _calibrate_kwargs(device, ort.__version__)
        per_exit_s = base.latency.per_exit_cycles / base.clock_hz

        def write_csv(path: Path, rows: list[dict]) -> Path:
            """Both passes as repeated rows of one model, as a user who measured twice writes them: calibrate
            aggregates them (their median: the mean of two) and reports their spread as its noise floor."""
            with open(path, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["model", "latency_ms", "threads"])
                for m in rows:
                    for rep in "ab":
                        w.writerow([os.path.relpath(m["path"], path.parent), f"{m[f'latency_{rep}_s'] * 1e3:.6f}", 1])
            return path

        prof_dir = work / "profiles"
        prof_dir.mkdir()
        variants = {"end_to_end_csv": [str(write_csv(work / "calib.csv", calib))]}
        if not args.no_profiles:
            variants["ort_profiles"] = [f"{m['path']}={ort_profile(m['path'], prof_dir, 5 if args.quick else 30)}"
                                        for m in calib]
        if random_blocks:
            variants["end_to_end_csv_own_only"] = [str(write_csv(work / "calib_own.csv", calib_own))]

        results = {}
        for variant, sources in variants.items():
            fit_set = calib_own if variant.endswith("own_only") else calib
            a, b = fit_macs_only([ModelTotal(m["path"], m["latency_s"], {}, 1, 1, m["macs"]) for m in fit_set],
                                 per_exit_s)
            cal, path = calibrate(args.target, sources, out=work / f"{args.target}-{variant}.toml", **kwargs)
            target = load_target(str(path))
            for m in held:
                pred = cost.predict_latency(m["graph"], target)
                m["pred"], m["pred_macs_only"] = pred.worst_s, a + b * m["macs"] + per_exit_s
                interval = cost.latency_interval(pred.worst_s, target.latency.interval)  # None: it has none
                for k in ("pred_lo", "pred_hi"):
                    m.pop(k, None)
                if interval is not None:
                    m["pred_lo"], m["pred_hi"] = interval
                m[f"predicted_{variant}_s"] = pred.worst_s
            held_out = {}
            for group, ms in groups.items():
                model_scores = _score(ms, "pred")
                base_scores = _score(ms, "pred_macs_only")
                if len(ms) > 1:  # the MACs-only ranking is the ranking by MACs, whatever the fitted slope
                    base_scores["kendall_tau"] = kendall_tau([m["latency_s"] for m in ms], [m["macs"] for m in ms])
                held_out[group] = {"model": model_scores, "macs_only": base_scores}
            own_w10 = held_out["own"]["model"].get("within_10pct")
            foreign_w10 = held_out["foreign"]["model"].get("within_10pct")
            results[variant] = {
                "calibration_set": "own-space only" if variant.endswith("own_only") else
                                   "own-space + random blocks" if random_blocks else "own-space",
                "n_calibration": len(fit_set),
                "family": cal.family, "fallback": cal.fallback,
                "family_cv": cal.family_cv, "cv_on_calibration_set": cal.cv,
                "channel_block": cal.channel_block, "n_observations": cal.n_observations,
                "calibration_noise_floor": cal.noise_floor,
                "held_out": held_out,
                "goals": {"own_within_10pct": own_w10, "own_goal": GOAL_OWN_WITHIN_10PCT,
                          "own_met": own_w10 is not None and own_w10 >= GOAL_OWN_WITHIN_10PCT,
                          "foreign_within_10pct": foreign_w10, "foreign_goal": GOAL_FOREIGN_WITHIN_10PCT,
                          "foreign_met": foreign_w10 is not None and foreign_w10 >= GOAL_FOREIGN_WITHIN_10PCT},
                "macs_only_fit": {"a_s": a, "b_s_per_mac": b},
                # the provenance names the calibration files, which lived in the temporary work folder
                "override_toml": path.read_text().replace(str(work), "<work>").replace(
                    str(Path(args.models_dir).resolve()) if args.models_dir else str(work), "<models>")}
            print(f"{variant}: family {results[variant]['family']}; held-out own {own_w10}% within +-10% "
                  f"(tau {held_out['own']['model'].get('kendall_tau')}), foreign {foreign_w10}% "
                  f"(tau {held_out['foreign']['model'].get('kendall_tau')}, MACs-only tau "
                  f"{held_out['foreign']['macs_only'].get('kendall_tau')})", file=sys.stderr)

        doc = {
            "benchmark": "costmodel_host",
            "what": "held-out accuracy of the calibrated latency model on onnxruntime, own-space and foreign "
                    "families, vs a MACs-only baseline",
            "host": {"node": platform.node(), "machine": platform.machine(), "processor": platform.processor(),
                     "cpu_count": os.cpu_count(), "python": platform.python_version()},
            "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider", "threads": 1,
            "base_target": args.target, "seed": args.seed, "quick": args.quick,
            "reused_measurements": str(cache) if args.reuse else None,
            "n_models": {"own": len(own), "random_blocks": len(random_blocks), "foreign": len(foreign),
                         "calibration": len(calib), "held_out_own": len(held_own)},
            "n_mbv3": args.mbv3, "n_nb201": args.nb201, "foreign_resolutions": args.resolutions,
            "calibration_set": "own-space models + random-block models; the foreign families are never in it",
            "not_analysable": not_analysable,
            "measurement": {"protocol": timing_protocol(args),
                            "noise_floor_median_abs_rel_diff_between_passes": statistics.median(pass_diff),
                            "noise_p90_abs_rel_diff_between_passes": float(np.percentile(pass_diff, 90)),
                            "noise_floor_median_ci_halfwidth": ci_floor,
                            "converged_pct": 100.0 * float(np.mean([t["converged"] for t in timed])) if timed
                            else None,
                            "one_sided_pct": 100.0 * float(np.mean([t["one_sided"] for t in timed])) if timed
                            else None,
                            "latency_ms_range": {s: [1e3 * min(m["latency_s"] for m in models if m["set"] == s),
                                                     1e3 * max(m["latency_s"] for m in models if m["set"] == s)]
                                                 for s in sorted({m["set"] for m in models})}},
            "results": results,
            "seconds": {"export": t_export, "measure": t_measure, "total": time.time() - t_start},
            "models": [{k: v for k, v in m.items() if k not in ("path", "graph", "timing_a", "timing_b", "pred",
                                                                  "pred_lo", "pred_hi", "pred_macs_only")}
                       | {"file": Path(m["path"]).name, "calibration": id(m) in calib_ids} for m in models],
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(json_finite(doc), indent=1, allow_nan=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)  # exported models are kept only in --models-dir
    print(f"wrote {out} in {time.time() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
