"""Does inherited accuracy rank architectures? Supernet-inherited accuracy vs stand-alone training from scratch.

For N architectures of `mbv3` drawn with a fixed seed and stratified by worst-case MACs (8 quantile bins of a random
pool, the smallest and largest subnets always in), this compares
  - the inherited validation accuracy, exactly as the search scores a candidate (weights sliced out of the supernet,
    BN re-calibrated, final head re-fitted on frozen features), and
  - the test accuracy of the same architecture trained stand-alone from scratch with one fixed recipe (steps, not
    epochs; SGD + cosine; cached in a JSON so that runs before and after a supernet change share one ground truth).
The two are scored on disjoint splits (validation vs test), so they do not share test-image noise.
Reports Kendall tau-b with a paired bootstrap 90 % interval over architectures, the mean within-bin tau, the top-5
overlap (with its chance level k^2/N), the regret of the evaluator's top-1, tau(MACs, ground truth) as the trivial
baseline, and the noise ceiling implied by the ground truth's binomial error.

    python benchmarks/supernet_ranking.py --dataset digits --label after
    python benchmarks/supernet_ranking.py --dataset mnist5k --label after --workers 2
    python benchmarks/supernet_ranking.py --dataset mnist5k --label ablation --set with_smallest=true --set threads=1

The committed "before" results ran this script with PYTHONPATH pointing at commit 6692510's toolchain (epoch-based
supernet, trained single-threaded as that commit's driver did; all training images for the final-head re-fit).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class StandaloneRecipe:
    """One fixed recipe for every architecture: a budget in steps, so a small dataset is not trained for less."""
    steps: int = 500
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-5
    label_smoothing: float = 0.1
    seed: int = 0


def select_architectures(space, in_channels: int, n_classes: int, n: int, seed: int, pool: int = 240):
    """n genomes (exits off) stratified by worst-case MACs: 8 quantile bins of a random pool, n/8 from each bin,
    with the smallest and largest subnets replacing one draw of the first and last bin."""
    rng = np.random.default_rng(seed)
    genomes, keys = [], set()
    while len(genomes) < pool:
        g = space.sample(rng)
        g[space.exit_genes] = 0
        k = space.key(g)
        if k not in keys:
            keys.add(k)
            genomes.append(g)
    macs = np.array([macs_of(space, g, in_channels, n_classes) for g in genomes])
    edges = np.quantile(macs, np.linspace(0, 1, 9))
    bins = np.clip(np.searchsorted(edges, macs, side="right") - 1, 0, 7)
    per_bin = [n // 8 + (1 if b < n % 8 else 0) for b in range(8)]
    chosen = []
    for b in range(8):
        idx = np.flatnonzero(bins == b)
        chosen += list(rng.choice(idx, size=min(per_bin[b], len(idx)), replace=False))
    picked = [genomes[i] for i in chosen]
    picked[0] = space.encode(space.smallest())
    picked[-1] = space.encode(space.largest())
    return picked


def macs_of(space, genome, in_channels: int, n_classes: int) -> int:
    from edgenas import cost
    net = space.build_empty(space.decode(genome), in_channels, n_classes)
    return int(cost.macs_per_exit(cost.from_torch(net))[-1])


# --------------------------------------------------------------------------------------------------------------
# ground truth: stand-alone training from scratch
def train_standalone(space_name: str, genome: list[int], dataset: str, recipe: StandaloneRecipe) -> dict:
    from edgenas.data import load_dataset, resize
    from edgenas.spaces import create_space
    torch.set_num_threads(1)
    space = create_space(space_name)
    data = load_dataset(dataset)
    arch = space.decode(np.array(genome))
    torch.manual_seed(recipe.seed)
    net = space.build_empty(arch, data.in_channels, data.n_classes)
    opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                          weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.steps, pct_start=0.1,
                                                anneal_strategy="cos")
    gen = torch.Generator().manual_seed(recipe.seed)
    n = len(data.train.y)
    t0 = time.time()
    net.train()
    step = 0
    while step < recipe.steps:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - recipe.batch_size + 1, recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            x = resize(data.train.x[idx], arch.resolution)
            logits = net.forward_all(x)[0][-1]
            loss = F.cross_entropy(logits, data.train.y[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= recipe.steps:
                break
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net.forward_all(resize(data.test.x[i:i + 256], arch.resolution))[0][-1]
                            for i in range(0, len(data.test.y), 256)])
    return {"key": space.key(np.array(genome)), "test_accuracy": float((logits.argmax(1) == data.test.y).float().mean()),
            "test_nll": float(F.cross_entropy(logits, data.test.y)), "n_test": len(data.test.y),
            "seconds": round(time.time() - t0, 1)}


def _standalone_job(args):
    return train_standalone(*args)


def ground_truth(space, genomes, dataset: str, recipe: StandaloneRecipe, workers: int, cache_path: Path) -> dict:
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    tag = json.dumps(asdict(recipe), sort_keys=True)
    entries = cache.get(tag, {})
    todo = [g for g in genomes if space.key(g) not in entries]
    if todo:
        jobs = [(space.name, [int(v) for v in g], dataset, recipe) for g in todo]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
            for r in pool.imap_unordered(_standalone_job, jobs):
                entries[r["key"]] = r
                cache[tag] = entries
                cache_path.write_text(json.dumps(cache, indent=1) + "\n")
                print(f"  stand-alone {r['key']}: test {r['test_accuracy'] * 100:.2f} % in {r['seconds']} s", flush=True)
    return entries


# --------------------------------------------------------------------------------------------------------------
# the evaluator under test: inherited weights, scored exactly as the search scores a candidate
def inherited_scores(space, supernet, data, genomes, seed: int) -> list[dict]:
    from edgenas.search.evaluate import CandidateEvaluator, EvaluationConfig, head_training_features
    from edgenas.train.exits import exit_features, train_final_head
    cfg = EvaluationConfig()
    evaluator = CandidateEvaluator(space, supernet, data, None, None, cfg, seed)
    out = []
    for g in genomes:
        arch, key, cand_seed, net = evaluator.build(g)
        feats, y_head = head_training_features(net, data, cfg.exits)
        train_final_head(net, feats[-1], y_head, cfg.exits, cand_seed)
        with torch.no_grad():
            logits = net.heads[-1](exit_features(net, data.val.x)[-1])
        out.append({"key": key, "val_accuracy": float((logits.argmax(1) == data.val.y).float().mean()),
                    "val_nll": float(F.cross_entropy(logits, data.val.y)), "n_val": len(data.val.y)})
    return out


# --------------------------------------------------------------------------------------------------------------
def kendall(a, b) -> float:
    from scipy.stats import kendalltau
    tau = kendalltau(a, b).statistic
    return 0.0 if math.isnan(tau) else float(tau)


def bootstrap_tau(a, b, n_resamples: int = 10000, seed: int = 0) -> list[float]:
    """Paired percentile bootstrap over architectures, 90 %."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a), np.asarray(b)
    taus = []
    for _ in range(n_resamples):
        i = rng.integers(0, len(a), len(a))
        taus.append(kendall(a[i], b[i]))
    return [float(np.percentile(taus, 5)), float(np.percentile(taus, 95))]


def ranking_summary(macs, inherited, truth, bins) -> dict:
    n = len(truth)
    k = min(5, n)
    # ties in the evaluator broken by lower NLL would be an extra signal; here accuracy as the search uses it
    top_eval = set(np.argsort(-np.asarray(inherited), kind="stable")[:k])
    top_true = set(np.argsort(-np.asarray(truth), kind="stable")[:k])
    within = []
    for b in sorted(set(bins)):
        idx = [i for i in range(n) if bins[i] == b]
        if len(idx) >= 2:
            within.append(kendall([inherited[i] for i in idx], [truth[i] for i in idx]))
    best_eval = int(np.argmax(inherited))
    return {"kendall_tau": kendall(inherited, truth), "kendall_tau_90ci": bootstrap_tau(inherited, truth),
            "within_bin_tau_mean": float(np.mean(within)) if within else None,
            "top5_overlap": len(top_eval & top_true), "top5_chance": k * k / n,
            "regret_top1_pt": float((max(truth) - truth[best_eval]) * 100),
            "tau_macs_vs_truth": kendall(macs, truth), "tau_macs_vs_truth_90ci": bootstrap_tau(macs, truth),
            "tau_macs_vs_inherited": kendall(macs, inherited)}


def noise_ceiling(truth, n_test: int) -> dict:
    """Best tau any evaluator can show against one noisy measurement: (2/pi) asin(S / sqrt(S^2 + sigma^2)), with S the
    spread of the true accuracies (observed variance minus noise) and sigma the binomial SE of one accuracy."""
    acc = np.asarray(truth)
    sigma2 = float(np.mean(acc * (1 - acc) / n_test))
    s2 = max(float(np.var(acc, ddof=1)) - sigma2, 0.0)
    ceiling = (2 / math.pi) * math.asin(math.sqrt(s2 / (s2 + sigma2))) if s2 + sigma2 > 0 else 0.0
    return {"spread_sd_pt": math.sqrt(s2) * 100, "binomial_se_pt": math.sqrt(sigma2) * 100, "tau_ceiling": ceiling}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--label", default="after", help="before|after: names the result file")
    parser.add_argument("--n-archs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes for the stand-alone trainings")
    parser.add_argument("--steps", type=int, default=StandaloneRecipe.steps, help="stand-alone training steps")
    parser.add_argument("--standalone-only", action="store_true", help="only fill the stand-alone cache")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a SupernetConfig field for this run, e.g. --set n_random=3 (repeatable)")
    args = parser.parse_args()

    from edgenas.data import load_dataset
    from edgenas.search.driver import SearchConfig
    from edgenas.runtime import torch_threads
    from edgenas.spaces import create_space
    from edgenas.train.supernet import train_supernet

    cpu = torch.backends.cpu.get_cpu_capability()
    space = create_space("mbv3")
    data = load_dataset(args.dataset)
    genomes = select_architectures(space, data.in_channels, data.n_classes, args.n_archs, args.seed)
    macs = [macs_of(space, g, data.in_channels, data.n_classes) for g in genomes]
    print(f"{len(genomes)} architectures, MACs {min(macs) / 1e6:.3f}..{max(macs) / 1e6:.3f} M (cpu {cpu})", flush=True)

    recipe = StandaloneRecipe(steps=args.steps)
    t0 = time.time()
    truth = ground_truth(space, genomes, args.dataset, recipe, args.workers,
                         RESULTS / f"supernet_ranking_standalone_{args.dataset}.json")
    gt_seconds = time.time() - t0
    if args.standalone_only:
        return

    cfg = SearchConfig(dataset=args.dataset)
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = type(getattr(cfg.supernet, name))(json.loads(value))
    cfg = replace(cfg, supernet=replace(cfg.supernet, **overrides))
    supernet = space.supernet(data.in_channels, data.n_classes)
    t0 = time.time()
    train_supernet(space, supernet, data, cfg.supernet, args.seed)  # threads: cfg.supernet.threads (--set threads=N)
    supernet_seconds = time.time() - t0
    t0 = time.time()
    with torch_threads(1):  # as the search's evaluation workers score candidates
        inherited = inherited_scores(space, supernet, data, genomes, args.seed)
    eval_seconds = time.time() - t0

    keys = [space.key(g) for g in genomes]
    gt_acc = [truth[k]["test_accuracy"] for k in keys]
    gt_nll = [truth[k]["test_nll"] for k in keys]
    inh_acc = [r["val_accuracy"] for r in inherited]
    inh_nll = [r["val_nll"] for r in inherited]
    edges = np.quantile(macs, np.linspace(0, 1, 5))
    bins = [int(np.clip(np.searchsorted(edges, m, side="right") - 1, 0, 3)) for m in macs]  # 4 bins of 4 at N=16
    summary = {
        "benchmark": "supernet_ranking", "dataset": args.dataset, "label": args.label, "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "cpu_capability": cpu, "platform": platform.platform(),
                    "torch": torch.__version__},
        "n_architectures": len(genomes), "supernet": asdict(cfg.supernet),
        "supernet_seconds": round(supernet_seconds, 1), "inherited_eval_seconds": round(eval_seconds, 1),
        "standalone_recipe": asdict(recipe), "standalone_seconds_this_run": round(gt_seconds, 1),
        "accuracy": ranking_summary(macs, inh_acc, gt_acc, bins),
        "nll": ranking_summary(macs, [-v for v in inh_nll], [-v for v in gt_nll], bins),
        "ground_truth_noise": noise_ceiling(gt_acc, truth[keys[0]]["n_test"]),
        "architectures": [{"key": k, "description": space.decode(g).describe(), "macs": m, "bin": b,
                           "inherited_val_accuracy": ia, "inherited_val_nll": inl, "standalone_test_accuracy": ga,
                           "standalone_test_nll": gn}
                          for k, g, m, b, ia, inl, ga, gn in zip(keys, genomes, macs, bins, inh_acc, inh_nll, gt_acc,
                                                                  gt_nll)],
    }
    out = RESULTS / f"supernet_ranking_{args.dataset}_{args.label}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    a = summary["accuracy"]
    print(f"{args.dataset} {args.label}: tau {a['kendall_tau']:.3f} 90% [{a['kendall_tau_90ci'][0]:.3f}, "
          f"{a['kendall_tau_90ci'][1]:.3f}], top-5 {a['top5_overlap']} (chance {a['top5_chance']:.2f}), "
          f"tau(MACs) {a['tau_macs_vs_truth']:.3f}, NLL tau {summary['nll']['kendall_tau']:.3f}, "
          f"ceiling {summary['ground_truth_noise']['tau_ceiling']:.2f}; supernet {supernet_seconds:.0f} s -> {out}")


if __name__ == "__main__":
    main()
