"""The tiny 3-exit early-exit net on 8x8 digits that the compile and profile tests build for (trained once per test
session by the conftest fixture `exit_net_export`), and thresholds that make it take every exit."""
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from edgenas.nn.early_exit import EarlyExitNet

N_CLASSES = 10


def cbr(c_in, c_out, stride):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def head(c_in, n_out, pool=2):
    return nn.Sequential(nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Linear(c_in * pool * pool, n_out))


def digits():
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], d.target[order].astype(np.int64)


def train_net(x, y, steps=150):
    torch.manual_seed(0)
    net = EarlyExitNet([cbr(1, 8, 1), cbr(8, 16, 2), cbr(16, 16, 1)],
                       [head(8, N_CLASSES + 1), head(16, N_CLASSES + 1), head(16, N_CLASSES, pool=1)],
                       N_CLASSES, (1, 8, 8), [0.5, 0.5])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for step in range(steps):
        idx = torch.randint(0, len(xt), (64,))
        logits, conf = net.forward_all(xt[idx])
        loss = sum(F.cross_entropy(lg, yt[idx]) for lg in logits)
        correct = torch.stack([(lg.argmax(1) == yt[idx]).float() for lg in logits[:-1]], dim=1)
        loss = loss + F.binary_cross_entropy(conf, correct)  # confidence learns "this exit is right"
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def thresholds_taking_every_exit(net, x):
    """Thresholds between observed exit scores, so that some inputs leave at each exit and none sits on a border."""
    with torch.no_grad():
        _, conf = net.forward_all(torch.from_numpy(x))
    c = conf.numpy().astype(np.float64)
    score0 = c[:, 0]
    s0 = np.sort(score0)
    k = int(0.6 * len(s0))
    thr0 = float((s0[k - 1] + s0[k]) / 2)
    rest = score0 < thr0
    score1 = 1 - (1 - c[rest, 0]) * (1 - c[rest, 1])
    s1 = np.sort(score1)
    k = len(s1) // 2
    thr1 = float((s1[k - 1] + s1[k]) / 2)
    return [thr0, thr1]
