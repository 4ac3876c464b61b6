"""Fine-tuning of a chosen network before it ships: its backbone and final head, from the inherited weights.

The search ranks candidates with weights inherited from the supernet, a good proxy for ranking but not a trained
network: measured on the then-default digits run, architectures whose inherited test accuracy was 81-99 % reached 98.6-100 %
when trained (issue 17). OFA, MCUNet and NACHOS's own pipeline fine-tune the selected subnet before deployment;
this does the same for every Pareto member.

What trains: every segment and the final head (the last head of the network given, so a network cut after an
intermediate exit trains that exit's class logits), in train mode (BN statistics follow the new weights). The
intermediate exit heads stay as they are here: the caller re-trains them on the fine-tuned backbone's frozen features
and re-chooses the thresholds, exactly as the search did.

Loss: cross-entropy on labels (with label smoothing), optionally mixed with distillation from a teacher, the
supernet's largest subnet: (1 - distill_weight) * CE + distill_weight * KL(teacher || student). The teacher's
predictions on the training images are computed once by the caller (`teacher_probabilities`) and passed in, so worker
processes need neither the supernet nor the teacher. Off by default, by measurement (benchmarks/finetune_gap.py on the
default run, 16 members, 1,000 test images each): distill_weight 0.5 changed the mean test accuracy by +0.03 pt
(90 % bootstrap interval -0.10..+0.15), while costing a teacher pass; the teacher is ~100 % right on the train split,
so its soft targets carry little beyond the labels. 600 steps gained +0.31 pt (0.16..0.49) over 300.

Optimiser: SGD with Nesterov momentum, or (adaptive) SAM for FlatNAS members (`optimizer="sam"`), whose search
already fine-tunes candidates with it. The budget is in steps, with linear warm-up and a cosine to 0. Runs with the
thread count the caller set (workers use one thread: the result does not depend on the machine's core count).

Devices (edgenas.runtime): training runs where the net is, or on `device`; the split (and the teacher's predictions)
move there once when they fit, and the batch order comes from a CPU generator whatever the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from edgenas import runtime
from edgenas.data import resize
from edgenas.train.steps import LossHistory, endless_batch_indices, lr_factor


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 600                 # 0: members ship with their inherited weights
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-5
    lr_warmup_steps: int = 10
    label_smoothing: float = 0.1
    distill_weight: float = 0.0      # share of the loss that is KL to the teacher; 0: labels only (see above)
    optimizer: str = "sgd"           # "sgd", or "sam" (FlatNAS)
    sam_rho: float = 2.0
    sam_adaptive: bool = True


def final_logits(net, x: torch.Tensor) -> torch.Tensor:
    """Class logits of the network's final exit (every segment, then the last head)."""
    for seg in net.segments:
        x = seg(x)
    return net.heads[-1](x)


@torch.no_grad()
def teacher_probabilities(teacher, x: torch.Tensor, resolution: int, batch_size: int = 256) -> torch.Tensor:
    """Softmax of the teacher's final exit on every image of x (eval mode, at the teacher's resolution), computed on
    the teacher's device and returned on the CPU: the caller hands it to worker processes."""
    teacher.eval()
    device = runtime.module_device(teacher)
    return torch.cat([F.softmax(final_logits(teacher, resize(x[i:i + batch_size].to(device), resolution)), dim=1)
                      for i in range(0, len(x), batch_size)]).cpu()


def finetuned_parameters(net) -> list[torch.nn.Parameter]:
    return [p for m in (*net.segments, net.heads[-1]) for p in m.parameters()]


def _freeze_bn_stats(net) -> list:
    saved = []
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            saved.append((m, m.momentum))
            m.momentum = 0.0
    return saved


def _restore_bn_stats(saved) -> None:
    for m, momentum in saved:
        m.momentum = momentum


def finetune_network(net, train, config: FinetuneConfig, seed: int, teacher_probs: torch.Tensor | None = None,
                     progress: Callable[[int, float], None] | None = None, progress_every: int = 50,
                     device: str | None = None) -> list[float]:
    """Fine-tune `net`'s segments and final head in place on the split `train` (x, y); returns the mean loss per
    `progress_every` steps. `teacher_probs`: (len(train), n_classes) soft targets aligned with train.x, or None.

    device: where it trains; None = where the net is. The net goes back to the device it was on when called (with
    None it never moves), so a caller that passes a CPU net gets a CPU net back. `train` and `teacher_probs` may be
    on the CPU or already on `device`."""
    if config.steps < 1:
        return []
    if config.optimizer not in ("sgd", "sam"):
        raise ValueError(f"unknown fine-tuning optimiser '{config.optimizer}' (sgd or sam)")
    if teacher_probs is not None and len(teacher_probs) != len(train.y):
        raise ValueError(f"teacher predictions for {len(teacher_probs)} images, the split has {len(train.y)}")
    home = runtime.module_device(net)
    device = home if device is None else device
    runtime.use_deterministic_kernels(device)
    net.to(device)  # before the optimiser exists: its state is created next to the parameters
    try:
        return _finetune(net, train, config, seed, teacher_probs, progress, progress_every, device)
    finally:
        net.to(home)


def _finetune(net, train, config: FinetuneConfig, seed: int, teacher_probs, progress, progress_every: int,
              device: str) -> list[float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    params = finetuned_parameters(net)
    sgd = dict(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True)
    if config.optimizer == "sam":
        from edgenas.train.sam import SAM
        opt = SAM(params, torch.optim.SGD, rho=config.sam_rho, adaptive=config.sam_adaptive, **sgd)
    else:
        opt = torch.optim.SGD(params, **sgd)
    # SAM shares its param_groups with the SGD it wraps and steps that one: schedule it there
    stepped = opt.base_optimizer if config.optimizer == "sam" else opt
    sched = torch.optim.lr_scheduler.LambdaLR(stepped, lambda s: lr_factor(s, config.steps, config.lr_warmup_steps))
    res = net.input_shape[-1]
    w_kd = config.distill_weight if teacher_probs is not None else 0.0

    def loss_of(x, y, soft):
        logits = final_logits(net, x)
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        if w_kd:
            kd = F.kl_div(F.log_softmax(logits, dim=1), soft, reduction="batchmean")
            loss = (1.0 - w_kd) * loss + w_kd * kd
        return loss

    history = LossHistory(config.steps, progress_every, progress)
    batches = endless_batch_indices(len(train.y), config.batch_size, gen)
    # moved once, for every epoch, when they fit on the device (the teacher's predictions only when they are used)
    resident = runtime.data_on_device(device, train.x, train.y, *([teacher_probs] if w_kd else []))
    net.train()
    for step in range(config.steps):
        idx = next(batches)
        x, y, *soft = runtime.batch_on(device, idx, *resident)
        x, soft = resize(x, res), (soft[0] if soft else None)
        opt.zero_grad(set_to_none=True)
        loss = loss_of(x, y, soft)
        loss.backward()
        if config.optimizer == "sam":
            opt.first_step()
            saved = _freeze_bn_stats(net)  # BN statistics follow the first pass only (FlatNAS's reference)
            loss_of(x, y, soft).backward()
            _restore_bn_stats(saved)
            opt.second_step()
        else:
            opt.step()
        sched.step()
        history.add(step, loss)
    net.eval()
    return history.means
