"""SAM/ASAM optimiser wrapper and the weight-perturbation flatness metric used by FlatNAS."""
import pytest
import torch
from torch import nn

from edgenas.train.flatness import flatness
from edgenas.train.sam import SAM


@pytest.mark.parametrize("adaptive", [True, False])
def test_one_sam_step_equals_the_hand_computed_update(adaptive):
    w0 = torch.tensor([0.5, -1.5, 2.0])
    x = torch.tensor([1.0, 2.0, -0.5])
    y = torch.tensor(3.0)
    rho, lr = 0.3, 0.1
    w = nn.Parameter(w0.clone())
    opt = SAM([w], torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (w @ x - y) ** 2
        loss.backward()
        return loss
    opt.step(closure)

    # by hand: g = (w.x - y) x ; e = rho * T^2 g / ||T g|| ; w' = w - lr * grad at (w + e)
    g = (w0 @ x - y) * x
    t = w0.abs() if adaptive else torch.ones(3)
    e = rho * t ** 2 * g / torch.linalg.norm(t * g)
    w_adv = w0 + e
    g_adv = (w_adv @ x - y) * x
    expected = w0 - lr * g_adv
    assert torch.allclose(w.detach(), expected, atol=1e-6)


def test_sam_with_momentum_keeps_base_optimizer_state():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, adaptive=False, lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for _ in range(3):
        opt.step(lambda: (opt.zero_grad(), nn.functional.cross_entropy(model(x), y).backward())[0])
    assert all("momentum_buffer" in opt.base_optimizer.state[p] for p in model.parameters())


class TwoFeatureClassifier(nn.Module):
    """sign(w . x + b) as 2-class logits."""

    def __init__(self, w, b):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([w]))
            self.lin.bias.fill_(b)

    def forward(self, x):
        z = self.lin(x)
        return torch.cat([-z, z], dim=1)


def test_flatness_orders_sharp_and_flat_minima():
    torch.manual_seed(0)
    n = 400
    y = torch.randint(0, 2, (n,))
    x = torch.randn(n, 2) * 0.2
    x[:, 0] += (2 * y - 1).float()  # classes at x0 = -1 and +1
    # both classify perfectly; the flat one has a wide margin, the sharp one relies on two large weights that cancel
    flat = TwoFeatureClassifier([1.0, 0.0], 0.0)
    # sharp: logit 50 u - 49 v with u = (x0 + 49 s) / 50, v = s, s ~ 10: the same decision x0 > 0 by cancellation
    sharp = TwoFeatureClassifier([50.0, -49.0], 0.0)
    s = 10.0 + torch.randn(n)
    x_sharp = torch.stack([(x[:, 0] + 49.0 * s) / 50.0, s], dim=1)

    def acc(model, data):
        return lambda m: float((m(data).argmax(1) == y).float().mean())
    r_flat, _ = flatness(flat, acc(flat, x), sigma=0.05, draws=20, seed=1)
    r_sharp, accs = flatness(sharp, acc(sharp, x_sharp), sigma=0.05, draws=20, seed=1)
    assert acc(flat, x)(flat) == 1.0 and acc(sharp, x_sharp)(sharp) == 1.0
    assert r_sharp > r_flat + 0.05
    # the metric restores the weights it perturbs
    assert torch.equal(sharp.lin.weight, torch.tensor([[50.0, -49.0]]))


def test_flatness_is_deterministic_per_seed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    x, y = torch.randn(100, 3), torch.randint(0, 2, (100,))

    def acc(m):
        return float((m(x).argmax(1) == y).float().mean())
    assert flatness(model, acc, seed=5)[1] == flatness(model, acc, seed=5)[1]
    assert flatness(model, acc, seed=5)[1] != flatness(model, acc, seed=6)[1]
