"""BatchNorm re-calibration: a subnet cut out of a supernet needs running statistics of its own."""
from __future__ import annotations

import torch
from torch import nn

from edgenas.data import batches, resize
from edgenas.runtime import module_device


@torch.no_grad()
def recalibrate_bn(net: nn.Module, split, resolution: int, batch_size: int = 128, max_batches: int = 8,
                   seed: int = 0) -> None:
    """Reset every BN's statistics and re-estimate them (cumulative average) on training batches.

    Runs on the net's device: the batches (drawn in a CPU generator's order) move there."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    was_training = net.training
    net.train()
    device = module_device(net)
    gen = torch.Generator().manual_seed(seed)
    for i, (x, _) in enumerate(batches(split, batch_size, shuffle=True, generator=gen)):
        if i >= max_batches:
            break
        x = resize(x.to(device), resolution)
        # every segment and head sees every sample (no early exit while estimating statistics)
        net.forward_all(x) if hasattr(net, "forward_all") else net(x)
    for bn in bns:
        bn.momentum = 0.1
    net.train(was_training)
