"""Training a derived network from scratch (what ZO-DARTS+ does with the cell it derives): the backbone and final head
on the final exit's loss, the intermediate heads' class logits on detached features, cosine learning rate per
epoch, BN statistics re-estimated at the end. The final epoch is reported: no selection on any split."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgenas import runtime
from edgenas.train.steps import cosine_lr, epoch_batch_indices, set_lr


@dataclass(frozen=True)
class RetrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 3e-4
    samples: int | None = None   # cap on the train-split samples used (None: all)
    split_seed: int = 0          # the order the cap takes the samples in
    bn_batches: int = 16         # training batches that re-estimate BN statistics at the end


@torch.no_grad()
def exit_accuracies(net, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> list[float]:
    """Accuracy of every exit's class logits (x already at the net's resolution), eval mode, on the net's device."""
    net.eval()
    right, device = None, runtime.module_device(net)
    for i in range(0, len(y), batch_size):
        logits, _ = net.forward_all(x[i:i + batch_size].to(device))
        hits = [int((lg.argmax(1) == y[i:i + batch_size].to(device)).sum()) for lg in logits]
        right = hits if right is None else [a + b for a, b in zip(right, hits)]
    return [r / max(len(y), 1) for r in right]


def retrain(net, data, cfg: RetrainConfig, seed: int, on_epoch=None, device: str = "cpu") -> dict:
    """Train `net` (an EarlyExitNet) from scratch on the train split; report the final epoch.

    Loss: cross-entropy of the final exit for backbone + final head; the intermediate heads learn their class
    logits on detached features, so they do not change the backbone. Their confidence columns are left to the exit
    training of the pipeline. BN statistics are re-estimated on training batches at the end (train/bn.py).
    device: where it trains; the net, built on the CPU, ends back on the CPU. Every random draw comes from CPU
    generators, so the CPU path does not depend on a GPU being present.
    """
    from edgenas.data import resize
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 4)
    res = net.input_shape[-1]
    order = torch.randperm(len(data.train.y), generator=torch.Generator().manual_seed(cfg.split_seed))
    if cfg.samples is not None:
        order = order[: cfg.samples]
    train_x, train_y = runtime.data_on_device(device, resize(data.train.x[order], res), data.train.y[order])
    net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    losses = []
    for epoch in range(cfg.epochs):
        set_lr(opt, cosine_lr(epoch, cfg.epochs, cfg.lr, 0.0))
        net.train()
        total, count = 0.0, 0
        for idx in epoch_batch_indices(len(train_y), cfg.batch_size, gen):
            x, y = runtime.batch_on(device, idx, train_x, train_y)
            opt.zero_grad(set_to_none=True)
            h, loss = x, 0.0
            for i, (seg, head) in enumerate(zip(net.segments, net.heads)):
                h = seg(h)
                if i < net.n_exits - 1:
                    loss = loss + F.cross_entropy(head(h.detach())[:, : net.n_classes], y)
                else:
                    final = F.cross_entropy(head(h), y)
            (loss + final).backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            total += float(final.detach()) * len(y)
            count += len(y)
        losses.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    if cfg.epochs > 0:
        # running statistics from the final weights (an exponential average lags them after short trainings)
        from edgenas.train.bn import recalibrate_bn
        split = type(data.train)(x=train_x, y=train_y)
        recalibrate_bn(net, split, res, batch_size=cfg.batch_size, max_batches=cfg.bn_batches, seed=seed)
    net.eval()
    val = exit_accuracies(net, resize(data.val.x, res), data.val.y)
    test = exit_accuracies(net, resize(data.test.x, res), data.test.y)
    net.cpu()
    return {"epochs": cfg.epochs, "train_loss": losses, "val_accuracy_per_exit": val,
            "test_accuracy_per_exit": test, "val_accuracy": val[-1], "test_accuracy": test[-1]}
