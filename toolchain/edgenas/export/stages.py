"""Per-stage ONNX export: stage i = segment i followed by head i, batch 1, static shapes, opset 18.

These stage files are the single source of truth downstream: the If-graph (`compose.py`), the int8 model
(`quantize.py`), the TVM host build and the MCU C driver all start from them. The exit decision is not inside a
stage; whoever chains the stages applies the rule documented in `exits_json.py`.

Exporter: `torch.onnx.export(..., dynamo=True, opset_version=18)`. It folds BatchNorm into Conv, names the graph
inputs/outputs as asked and produces no local functions, so the stage files need no clean-up.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import onnx
import torch
from torch import nn

from edgenas.errors import EdgenasError
from edgenas.export.checks import check_onnx, save_model
from edgenas.export.exits_json import FINAL_OUTPUTS, STAGE_OUTPUTS, StageInfo, exits_document, write_exits_json
from edgenas.nn.early_exit import EarlyExitNet

OPSET = 18
STAGES_DIR = "stages"


class StageModule(nn.Module):
    """Segment i + head i. Intermediate: h -> (h_out, logits, conf) with conf = sigmoid(confidence logit), shape (1,).
    Final: h -> logits."""

    def __init__(self, segment: nn.Module, head: nn.Module, n_classes: int, final: bool):
        super().__init__()
        self.segment, self.head, self.n_classes, self.final = segment, head, n_classes, final

    def forward(self, h: torch.Tensor):
        h = self.segment(h)
        out = self.head(h)
        if self.final:
            return out
        return h, out[:, : self.n_classes], torch.sigmoid(out[:, self.n_classes])


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Export in eval mode (BN statistics, no dropout) and give the caller its module back as it was."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def stage_input_name(i: int) -> str:
    return "x" if i == 0 else "h_in"


def stage_file(i: int, folder: str = STAGES_DIR) -> str:
    return f"{folder}/stage_{i}.onnx"


def stage_infos(net: EarlyExitNet) -> list[StageInfo]:
    """Input and h_out shape of every stage, checking that each head emits the columns the exit rule needs."""
    n = net.n_exits
    shape = (1, *net.input_shape)
    infos = []
    with eval_mode(net), torch.no_grad():
        h = torch.zeros(shape)
        for i in range(n):
            in_shape = tuple(h.shape)
            try:
                h = net.segments[i](h)
                out = net.heads[i](h)
            except RuntimeError as e:
                raise EdgenasError(f"stage {i} fails on an input of shape {list(in_shape)}: {str(e).splitlines()[0]}",
                                   "check the network's input_shape and segment channels")
            final = i == n - 1
            want = net.n_classes if final else net.n_classes + 1
            if tuple(out.shape) != (1, want):
                kind = "final head" if final else "intermediate head"
                raise EdgenasError(f"{kind} {i} outputs shape {list(out.shape)}, expected [1, {want}]",
                                   "intermediate heads return n_classes + 1 columns (last = confidence logit), "
                                   "the final head n_classes")
            infos.append(StageInfo(index=i, file=stage_file(i), input=stage_input_name(i), input_shape=in_shape,
                                   h_shape=None if final else tuple(h.shape)))
    return infos


def export_stage_protos(net: EarlyExitNet) -> list[onnx.ModelProto]:
    """Export every stage to an in-memory ONNX model (checked)."""
    infos = stage_infos(net)
    models = []
    with eval_mode(net):
        for info in infos:
            final = info.h_shape is None
            module = StageModule(net.segments[info.index], net.heads[info.index], net.n_classes, final).eval()
            outputs = list(FINAL_OUTPUTS if final else STAGE_OUTPUTS)
            try:
                program = torch.onnx.export(module, (torch.zeros(info.input_shape),), dynamo=True,
                                            opset_version=OPSET, input_names=[info.input], output_names=outputs,
                                            verbose=False)
            except Exception as e:  # the exporter raises its own error classes (TorchExportError, ...)
                raise EdgenasError(f"stage {info.index} could not be exported to ONNX: {str(e).splitlines()[0]}",
                                   "keep segments and heads free of data-dependent Python control flow")
            model = program.model_proto
            model.graph.name = f"stage_{info.index}"
            got = [o.name for o in model.graph.output]
            if got != outputs or [i.name for i in model.graph.input] != [info.input]:
                raise EdgenasError(f"stage {info.index} exported with inputs/outputs "
                                   f"{[i.name for i in model.graph.input]}/{got}, expected [{info.input}]/{outputs}",
                                   "report this exporter behaviour; stages must keep their names")
            models.append(check_onnx(model, f"stage {info.index}"))
    return models


def export_stages(net: EarlyExitNet, out_dir: Path, macs_per_exit: Sequence[int] | None = None) -> list[Path]:
    """Write `out_dir/stages/stage_{i}.onnx` for every exit and a first `out_dir/exits.json` (no metrics yet).

    Returns the stage paths in execution order. `macs_per_exit`, when given, goes into exits.json.
    """
    out_dir = Path(out_dir)
    models = export_stage_protos(net)  # everything that can fail happens before the first file is written
    infos = stage_infos(net)
    if macs_per_exit is not None and len(macs_per_exit) != len(infos):
        raise EdgenasError(f"macs_per_exit has {len(macs_per_exit)} entries for {len(infos)} exits",
                           "give the cumulative MACs to reach every exit, heads included")
    paths = [save_model(m, out_dir / info.file) for m, info in zip(models, infos)]
    write_exits_json(out_dir, exits_document(infos, net.n_classes, net.thresholds, macs_per_exit=macs_per_exit))
    return paths
