"""FlatNAS: flatness-aware NAS with SAM-trained candidates and out-of-distribution robustness.

Objective 1 = alpha * error + (1 - alpha) * alpha_norm * R, with R the mean |acc(w) - acc(w + sigma w*z)| over draws
(train/flatness.py) and alpha_norm = mean(error) / mean(R) over the archive evaluated so far, recomputed before every
generation as in the paper (so the whole archive's objective 1 is rewritten each time). Objective 2 = params (or the
deployed flash). Candidates are fine-tuned from the shared supernet weights with adaptive SAM (train/sam.py), then
get exit heads and thresholds exactly as in NACHOS, so FlatNAS members can carry early exits and go through the
same export and compile paths. OOD robustness: accuracy of the deployed early-exit network on 15 corruptions x 5
severities of the test split, generated at the network's input resolution, deterministic per seed.
On a GPU (the evaluator's `device`), SAM fine-tuning, flatness and the corrupted-test predictions run there; the
flatness noise and the corruptions are drawn on the CPU, so every device sees the same perturbations and images.

Differences from the reference: R and every selection use the validation split (HEAD uses the test set), and the
params cap is a constraint under constraint domination (the reference adds a 1e10 penalty).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgenas import runtime
from edgenas.search.evaluate import N_CONSTRAINTS, CandidateEvaluator, constraint_values
from edgenas.search.methods import register_method
from edgenas.search.nsga2 import Nsga2Method


@dataclass(frozen=True)
class FlatnasConfig:
    alpha: float = 0.5
    sigma: float = 0.05
    draws: int = 20
    rho: float = 2.0             # ASAM neighbourhood size (the reference's default)
    adaptive: bool = True
    finetune_epochs: int = 2
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-5
    batch_size: int = 128
    second_objective: str = "params"   # "params" or "flash"
    max_params: int | None = None      # the paper's parameter cap (5 M for CIFAR); None = only the target's flash
    ood_samples: int = 200             # test images used for the corruption benchmark per candidate
    ood_severities: tuple[int, ...] = (1, 2, 3, 4, 5)


class FlatnasEvaluator(CandidateEvaluator):
    def __init__(self, *args, flatnas: FlatnasConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.flat = flatnas
        self.params_cap = flatnas.max_params

    def finetune(self, net, seed: int) -> None:
        """Fine-tune backbone + final head from the inherited weights with (adaptive) SAM, on the train split, for
        `finetune_epochs` epochs of full batches (train/finetune.py; labels only, cosine learning rate)."""
        from edgenas.train.finetune import FinetuneConfig, finetune_network
        steps = self.flat.finetune_epochs * max(1, len(self.data.train.y) // self.flat.batch_size)
        finetune_network(net, self.device_data().train, FinetuneConfig(
            steps=steps, batch_size=self.flat.batch_size, lr=self.flat.lr, momentum=self.flat.momentum,
            weight_decay=self.flat.weight_decay, lr_warmup_steps=0, label_smoothing=0.0, distill_weight=0.0,
            optimizer="sam", sam_rho=self.flat.rho, sam_adaptive=self.flat.adaptive), seed, device=self.device)

    def extra_metrics(self, deployed, record: dict, seed: int) -> dict:
        from edgenas.data import resize
        from edgenas.data.corruptions import corrupted_accuracy
        from edgenas.train.flatness import flatness
        res, device = deployed.input_shape[-1], runtime.module_device(deployed)
        val = self.device_data().val
        x_val = resize(val.x.to(device), res)
        y_val = val.y.to(device)

        @torch.no_grad()
        def val_accuracy(model) -> float:
            logits, _ = model(x_val)
            return float((logits.argmax(1) == y_val).float().mean())

        r, accs = flatness(deployed, val_accuracy, self.flat.sigma, self.flat.draws, seed)
        n = min(self.flat.ood_samples, len(self.data.test.y))
        # corrupted on the CPU (corrupted_accuracy), from the CPU split: the same images whatever the device
        test = type(self.data.test)(x=resize(self.data.test.x[:n], res), y=self.data.test.y[:n])

        @torch.no_grad()
        def predict(x):
            return deployed(x.to(device))[0].argmax(1)

        ood = corrupted_accuracy(predict, test, seed=seed, severities=self.flat.ood_severities)
        return {"flatness": float(r), "perturbed_val_accuracy_mean": float(np.mean(accs)),
                "ood_accuracy": float(ood["mean"]),
                "ood_per_corruption": {k: float(np.mean(list(v.values()))) for k, v in ood.items() if k != "mean"},
                "ood_samples": n}


@register_method
class FlatnasMethod(Nsga2Method):
    name = "flatnas"
    n_constraints = N_CONSTRAINTS

    def __init__(self, options=None, config: FlatnasConfig | None = None):
        super().__init__(options)
        config = config or FlatnasConfig()
        self.config = config
        self.alpha_norm = 1.0
        self.objective_names = ("top1_robust", config.second_objective)

    @classmethod
    def for_config(cls, cfg):
        return cls(config=cfg.flatnas)

    def make_evaluator(self, space, supernet, data, target, budgets, cfg, device: str = "cpu") -> FlatnasEvaluator:
        return FlatnasEvaluator(space, supernet, data, target, budgets, cfg.evaluation, cfg.seed, device=device,
                                flatnas=self.config)

    def refresh(self, records: list[dict]) -> None:
        """alpha_norm = mean(error) / mean(R) over the archive so far (1.0 until R is non-zero)."""
        if records:
            mean_r = float(np.mean([r["flatness"] for r in records]))
            mean_err = float(np.mean([1.0 - r["val_accuracy"] for r in records]))
            self.alpha_norm = mean_err / mean_r if mean_r > 0 else 1.0

    def objectives(self, record: dict) -> list[float]:
        a = self.config.alpha
        f1 = a * (1.0 - record["val_accuracy"]) + (1.0 - a) * self.alpha_norm * record["flatness"]
        f2 = record["params"] if self.config.second_objective == "params" else record["flash_bytes"]
        return [f1, float(f2)]

    def constraints(self, record: dict, budgets) -> list[float]:
        return constraint_values(record, budgets, self.config.max_params)

    def hypervolume_reference(self, records: list[dict], budgets) -> tuple[float, float]:
        worst = max(self.objectives(r)[1] for r in records) * 1.01
        cap = self.config.max_params if self.config.second_objective == "params" else budgets.flash_bytes
        return 1.0, float(cap or worst)
