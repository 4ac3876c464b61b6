"""Post-training int8 quantisation of an early-exit network in torch, emulating the int8 model `edgenas export` ships.

The export quantises each stage with onnxruntime.quantization (QDQ, MinMax calibration on the first 256 train images,
int8 activations asymmetric per tensor, int8 weights symmetric per output channel in [-127, 127], confidence path in
float). This module puts the same quantise-dequantise ("fake quantisation") steps into a copy of the torch network, so
the search can score a candidate as it will run, without leaving torch (search runs before export and must not import
it). Where ONNX Runtime puts Q/DQ pairs, as read from its QDQ quantiser (onnxruntime 1.2x, `registry.py`):

- Conv and Linear (BatchNorm folded into the conv first, as the exporter does): input and output quantised; weights
  per output channel, scale max|w| / 127; bias int32 with scale input_scale * weight_scale.
- Add, Mul, standalone BatchNorm, Sigmoid, Concat: every input and the output quantised.
- ReLU: removed and its range given to the tensor it reads when that tensor has no other reader and is not a graph
  input or output ("fused" into the conv's output range); else quantised at its input and output; left in float when
  its input is not quantised.
- HardSwish: the quantiser's pre-processing splits it into HardSigmoid and Mul, so the HardSigmoid output is quantised
  as a Mul input, and the product as the Mul output.
- AveragePool: re-quantised with its input's parameters (direct 8-bit op). MaxPool, Flatten, Reshape: values unchanged.
- Global average pooling exports as ReduceMean, which ONNX Runtime does not quantise: it runs in float.
- The last Linear of every intermediate head (class logits + confidence logit) stays float, weights included.

Activation ranges are MinMax over the calibration images run through the fp32 network (the range always includes 0);
scale = (max - min) / 255, zero point = round(-128 - min / scale); quantised values round half to even and saturate to
[-128, 127] as ONNX QuantizeLinear does (torch.round is round-half-to-even).

Each segment and head is traced with torch.fx; stage boundaries need no special care, as the output of one stage and
the input of the next see the same fp32 values during calibration, so re-quantising them is the identity.
Not emulated: onnxruntime's weight-scale adjustment when an int32 bias would overflow (only for biases ~2^31 times
larger than input_scale * weight_scale), and float32 accumulation order inside kernels.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.fx.experimental.optimization import fuse as fold_batchnorm

from edgenas.nn.early_exit import EarlyExitNet
from edgenas.train.exits import exit_features, exit_outputs
from edgenas.train.thresholds import apply_policy

ACT_QMIN, ACT_QMAX = -128, 127
WEIGHT_QMAX = 127  # symmetric int8 weights use [-127, 127]
CALIBRATION_IMAGES = 256  # what `edgenas export` calibrates on: the first 256 train images

# how ONNX Runtime's QDQ quantiser treats each op (see the module docstring)
QUANTISED, RELU, HARDSWISH = "quantised", "relu", "hardswish"
SAME_SCALE, FLOAT, UNCHANGED = "same", "float", "unchanged"
_MODULE_RULES = ((nn.Conv2d, QUANTISED), (nn.Linear, QUANTISED), (nn.BatchNorm2d, QUANTISED),
                 (nn.Sigmoid, QUANTISED), (nn.ReLU, RELU), (nn.Hardswish, HARDSWISH), (nn.AvgPool2d, SAME_SCALE),
                 (nn.MaxPool2d, UNCHANGED), (nn.Flatten, UNCHANGED), (nn.Identity, UNCHANGED),
                 (nn.Dropout, UNCHANGED))
_FUNCTION_RULES = {operator.add: QUANTISED, torch.add: QUANTISED, operator.mul: QUANTISED, torch.mul: QUANTISED,
                   torch.cat: QUANTISED, torch.sigmoid: QUANTISED, torch.relu: RELU, nn.functional.relu: RELU,
                   torch.flatten: UNCHANGED, torch.reshape: UNCHANGED, operator.getitem: UNCHANGED}
_METHOD_RULES = {"add": QUANTISED, "mul": QUANTISED, "sigmoid": QUANTISED, "relu": RELU, "flatten": UNCHANGED,
                 "view": UNCHANGED, "reshape": UNCHANGED, "contiguous": UNCHANGED, "size": UNCHANGED}


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of an asymmetric int8 tensor observed in [lo, hi], as onnxruntime's compute_scale_zp."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (float(np.float64(hi) - np.float64(lo))) / (ACT_QMAX - ACT_QMIN)
    if np.float32(scale) < np.finfo(np.float32).tiny:
        return 1.0, 0
    zero_point = int(np.round(ACT_QMIN - lo / scale))
    return float(np.float32(scale)), zero_point


def fake_quantize(x: torch.Tensor, scale, zero_point, qmin: int = ACT_QMIN, qmax: int = ACT_QMAX) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear: round half to even, saturate. scale/zero_point: numbers or tensors that
    broadcast against x (per channel)."""
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def quantize_weight_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fake-quantised weight, per-output-channel scale): symmetric int8 in [-127, 127], scale = max|w| / 127 (a
    channel of zeros gets scale 1, as onnxruntime gives it)."""
    absmax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
    scale = absmax.to(torch.float32) / WEIGHT_QMAX
    scale = torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)
    shape = (-1,) + (1,) * (w.dim() - 1)
    return fake_quantize(w, scale.reshape(shape), 0, -WEIGHT_QMAX, WEIGHT_QMAX), scale


class ActivationQuantizer(nn.Module):
    """Observes the min/max of what passes while `calibrating`, then fake-quantises with the frozen parameters.
    `same_as`: re-quantise with another quantiser's parameters (a direct 8-bit op such as AveragePool)."""

    def __init__(self, same_as: "ActivationQuantizer | None" = None):
        super().__init__()
        self.calibrating = True
        self.lo, self.hi = float("inf"), float("-inf")
        self.scale, self.zero_point = 1.0, 0
        # a plain attribute, not a submodule: the source is registered where it is inserted
        self.__dict__["same_as"] = same_as

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            if self.same_as is None and x.numel():
                self.lo = min(self.lo, float(x.min()))
                self.hi = max(self.hi, float(x.max()))
            return x
        return fake_quantize(x, self.scale, self.zero_point)

    def freeze(self) -> None:
        self.calibrating = False
        if self.same_as is not None:
            self.scale, self.zero_point = self.same_as.scale, self.same_as.zero_point
        elif self.lo <= self.hi:
            self.scale, self.zero_point = activation_qparams(self.lo, self.hi)
        # never observed (no calibration image reached it): scale 1, zero point 0


class QuantizedHardswish(nn.Module):
    """x * q(hardsigmoid(x)): the HardSigmoid + Mul pair the quantiser's pre-processing makes of HardSwish, with the
    HardSigmoid output quantised as an input of the Mul (the Mul's other input and output are quantised outside)."""

    def __init__(self):
        super().__init__()
        self.gate = ActivationQuantizer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(nn.functional.hardsigmoid(x))


def _rule(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str:
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return FLOAT  # exported as ReduceMean (global pooling), which stays float
        return next((rule for kind, rule in _MODULE_RULES if isinstance(module, kind)), FLOAT)
    if node.op == "call_function":
        return _FUNCTION_RULES.get(node.target, FLOAT)
    if node.op == "call_method":
        return _METHOD_RULES.get(node.target, FLOAT)
    return UNCHANGED


def _tensor_inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    return [a for a in node.all_input_nodes if a.op != "get_attr"]


def quantize_module(module: nn.Module, float_linear: bool = False,
                    input_quantized: bool = False) -> torch.fx.GraphModule:
    """A traced copy of `module` (in eval mode) with BatchNorm folded into its convs and an ActivationQuantizer at every
    point the QDQ quantiser quantises (calibrating: they only observe until `freeze_quantized`). float_linear: its last
    Linear stays float (an intermediate head's confidence layer). input_quantized: the module's input is the output of
    a quantised op upstream (another stage part), so it is quantised whatever reads it. The returned module's
    `output_quantized` says the same of its output.
    """
    gm = fold_batchnorm(copy.deepcopy(module).eval())
    graph = gm.graph
    nodes = list(graph.nodes)
    float_node = None
    if float_linear:
        linears = [n for n in nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Linear)]
        float_node = linears[-1] if linears else None
    marked: dict[torch.fx.Node, torch.fx.Node | None] = {}  # quantised tensor -> the tensor whose parameters it reuses
    graph_outputs = {a for n in nodes if n.op == "output" for a in n.all_input_nodes}
    if input_quantized:
        marked.update({n: None for n in nodes if n.op == "placeholder"})
    for node in nodes:
        rule = FLOAT if node is float_node else _rule(gm, node)
        inputs = _tensor_inputs(node)
        if rule in (QUANTISED, HARDSWISH):
            for a in inputs:
                marked.setdefault(a, None)
            marked.setdefault(node, None)
        elif rule == RELU and inputs and inputs[0] in marked:
            upstream = inputs[0]
            if upstream.op != "placeholder" and len(upstream.users) == 1 and upstream not in graph_outputs:
                del marked[upstream]
            marked[node] = None
        elif rule == SAME_SCALE and inputs and inputs[0] in marked:
            marked[node] = inputs[0]
    quantizers: dict[torch.fx.Node, ActivationQuantizer] = {}
    for i, node in enumerate(n for n in nodes if n in marked):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Hardswish):
            gm.add_submodule(node.target, QuantizedHardswish())
        source = marked[node]
        quantizer = ActivationQuantizer(None if source is None else quantizers[source])
        quantizers[node] = quantizer
        name = f"act_quant_{i}"
        gm.add_submodule(name, quantizer)
        with graph.inserting_after(node):
            q_node = graph.call_module(name, (node,))
        node.replace_all_uses_with(q_node, delete_user_cb=lambda user: user is not q_node)
    # weights are quantised after calibration (freeze_quantized), which runs the fp32 weights as onnxruntime does
    gm.weight_inputs = {n.target: quantizers.get(_tensor_inputs(n)[0]) for n in nodes
                        if n is not float_node and n.op == "call_module"
                        and isinstance(gm.get_submodule(n.target), (nn.Conv2d, nn.Linear))}
    gm.output_quantized = bool(graph_outputs) and all(n in marked for n in graph_outputs)
    graph.lint()
    gm.recompile()
    return gm


@torch.no_grad()
def freeze_quantized(gm: torch.fx.GraphModule) -> None:
    """End calibration: fix every activation range, quantise the weights per output channel and the biases to int32
    at input_scale * weight_scale."""
    for module in gm.modules():
        if isinstance(module, ActivationQuantizer) and module.same_as is None:
            module.freeze()
    for module in gm.modules():  # re-quantisers after their sources
        if isinstance(module, ActivationQuantizer) and module.same_as is not None:
            module.freeze()
    for target, input_quantizer in gm.weight_inputs.items():
        layer = gm.get_submodule(target)
        weight, w_scale = quantize_weight_per_channel(layer.weight)
        layer.weight.copy_(weight)
        if layer.bias is not None and input_quantizer is not None:
            bias_scale = input_quantizer.scale * w_scale.to(torch.float64)
            layer.bias.copy_((torch.round(layer.bias.to(torch.float64) / bias_scale) * bias_scale).to(layer.bias.dtype))


@torch.no_grad()
def quantized_network(net: EarlyExitNet, calibration_x: torch.Tensor, batch_size: int = 256) -> EarlyExitNet:
    """An int8-emulating copy of `net` (on its device, eval mode): every segment and head quantised as the export
    quantises it, calibrated on `calibration_x` (images at any resolution; resized to the net's). The exit rule and
    thresholds are `net`'s; the confidence path stays float."""
    net.eval()
    segments, heads = [], []
    for i, (segment, head) in enumerate(zip(net.segments, net.heads)):
        segments.append(quantize_module(segment, input_quantized=i > 0 and segments[-1].output_quantized))
        heads.append(quantize_module(head, float_linear=i < net.n_exits - 1,
                                     input_quantized=segments[-1].output_quantized))
    qnet = EarlyExitNet(segments, heads, net.n_classes, net.input_shape, net.thresholds).eval()
    feats = exit_features(qnet, calibration_x, batch_size)  # calibration: every image through every stage and head
    for head, h in zip(qnet.heads, feats):
        head(h)
    for module in (*segments, *heads):
        freeze_quantized(module)
    return qnet


@dataclass(frozen=True)
class Int8Accuracy:
    accuracy: float          # early-exit accuracy of the int8 network, its thresholds, the fp32 exit rule
    accuracy_fp32: float     # the same images through the fp32 network
    exit_agreement: float    # fraction of images that leave at the same exit in int8 and fp32
    exit_rates: list[float]  # int8, per exit of the network
    n: int


def early_exit_predictions(net: EarlyExitNet, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, exit taken) per image under the net's own thresholds (all its exits active)."""
    preds, conf = exit_outputs(net, exit_features(net, x))
    taken = apply_policy(preds, conf, [True] * (net.n_exits - 1), net.thresholds)
    return preds[np.arange(len(taken)), taken], taken


@torch.no_grad()
def int8_accuracy(net: EarlyExitNet, qnet: EarlyExitNet, x: torch.Tensor, y) -> Int8Accuracy:
    """Accuracy on (x, y) of `qnet` (quantized_network(net, ...)) under net's thresholds, and how its exits agree
    with the fp32 network's."""
    y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
    pred8, taken8 = early_exit_predictions(qnet, x)
    pred32, taken32 = early_exit_predictions(net, x)
    return Int8Accuracy(accuracy=float((pred8 == y).mean()), accuracy_fp32=float((pred32 == y).mean()),
                        exit_agreement=float((taken8 == taken32).mean()),
                        exit_rates=[float(r) for r in np.bincount(taken8, minlength=net.n_exits) / len(y)], n=len(y))
