"""`exits.json`: the one description of an exported early-exit network that every later tool reads.

The MCU compiler, the TVM host compiler and the benchmarks read this file instead of re-deriving the exit policy,
so field names are stable within a format version. Format "edgenas-exits/1":

    {
      "format": "edgenas-exits/1",
      "producer": "edgenas 0.1.0",
      "n_exits": B,                         # exits = stages, the last one is the final classifier
      "n_classes": K,
      "input_shape": [1, C, H, W],          # batch 1, float32
      "thresholds": [thr_0, ..., thr_{B-2}],
      "exit_rule": "...",                   # the rule below, in words
      "stages": [                           # one per exit, in execution order
        {"index": i,
         "file": "stages/stage_i.onnx",     # fp32, opset 18, static shapes, batch 1
         "int8_file": "stages_int8/stage_i.onnx" | null,
         "input": "x" (stage 0) | "h_in",
         "input_shape": [...],
         "outputs": ["h_out", "logits", "conf"] (i < B-1) | ["logits"] (final),
         "h_shape": [...] (shape of h_out) | null (final)}
      ],
      "exits": [
        {"index": i,
         "threshold": thr_i | null (final),
         "macs": MACs from the input to this exit's decision, every earlier head included | null,
         "exit_rate": share of test samples leaving here (fp32 ORT) | null,
         "accuracy": accuracy of the samples leaving here (fp32 ORT) | null,
         "int8_exit_rate": ... | null, "int8_accuracy": ... | null}
      ],
      "expected_macs": sum_i exit_rate_i * macs_i | null,
      "files": {"model": "model.onnx", "static": "model.static.onnx", "int8": "model.int8.onnx"} (those written),
      "fp32": {"accuracy", "n_samples", "exit_agreement_vs_torch", "max_abs_logit_diff"} | null,
      "int8": {"accuracy", "accuracy_drop", "exit_agreement", "max_abs_logit_diff_vs_fp32", "scheme"} | null,
      "meta": {...}                         # free-form: run folder, candidate id, ...; from `edgenas export`:
                                            # "weights": "finetuned" | "inherited" | "retrained" (what ships),
                                            # "finetune": the recipe, "inherited": the supernet weights' accuracies
    }

Exit rule (computed in float32 outside the stages; the composed ONNX graph and the C driver do the same):
    s = 1;  for i < B-1: s = s * (1 - conf_i); if (1 - s >= thresholds[i]) take exit i;  otherwise take exit B-1.
A null threshold or metric means "not applicable" (final exit) or "not measured" (exits.json written by
`export_stages` alone, before any evaluation).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgenas import __version__
from edgenas.errors import EdgenasError
from edgenas.fileio import atomic_write_json

FORMAT = "edgenas-exits/1"
EXITS_FILE = "exits.json"
EXIT_RULE = "s = 1; for i < B-1: s = s * (1 - conf_i); exit at the first i with 1 - s >= thresholds[i]; else exit B-1"
STAGE_OUTPUTS = ("h_out", "logits", "conf")
FINAL_OUTPUTS = ("logits",)


@dataclass(frozen=True)
class StageInfo:
    """What a compiler needs to know about one stage file (segment i followed by head i)."""

    index: int
    file: str                       # relative to the export folder
    input: str                      # "x" for stage 0, "h_in" otherwise
    input_shape: tuple[int, ...]
    h_shape: tuple[int, ...] | None  # None for the final stage, which has no h_out
    int8_file: str | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        return FINAL_OUTPUTS if self.h_shape is None else STAGE_OUTPUTS

    def to_dict(self) -> dict:
        return {"index": self.index, "file": self.file, "int8_file": self.int8_file, "input": self.input,
                "input_shape": list(self.input_shape), "outputs": list(self.outputs),
                "h_shape": None if self.h_shape is None else list(self.h_shape)}


@dataclass(frozen=True)
class ExitMetrics:
    """Accuracy and exit statistics of one early-exit model on one labelled split."""

    n_samples: int
    accuracy: float
    exit_rates: tuple[float, ...]
    exit_accuracies: tuple[float | None, ...]  # None where no sample took that exit


def exits_document(stages: Sequence[StageInfo], n_classes: int, thresholds: Sequence[float], *,
                   macs_per_exit: Sequence[int] | None = None, fp32: ExitMetrics | None = None,
                   int8: ExitMetrics | None = None, fp32_checks: Mapping[str, Any] | None = None,
                   int8_checks: Mapping[str, Any] | None = None, files: Mapping[str, str] | None = None,
                   meta: Mapping[str, Any] | None = None) -> dict:
    """Build the exits.json document (a plain dict) from what is known so far."""
    n_exits = len(stages)
    if len(thresholds) != n_exits - 1:
        raise EdgenasError(f"{len(thresholds)} thresholds for {n_exits} exits",
                           f"give one threshold per intermediate exit ({n_exits - 1})")
    if macs_per_exit is not None and len(macs_per_exit) != n_exits:
        raise EdgenasError(f"macs_per_exit has {len(macs_per_exit)} entries for {n_exits} exits",
                           "give the cumulative MACs to reach every exit, heads included")
    exits = []
    for i in range(n_exits):
        exits.append({
            "index": i,
            "threshold": float(thresholds[i]) if i < n_exits - 1 else None,
            "macs": int(macs_per_exit[i]) if macs_per_exit is not None else None,
            "exit_rate": fp32.exit_rates[i] if fp32 else None,
            "accuracy": fp32.exit_accuracies[i] if fp32 else None,
            "int8_exit_rate": int8.exit_rates[i] if int8 else None,
            "int8_accuracy": int8.exit_accuracies[i] if int8 else None,
        })
    expected = None
    if fp32 is not None and macs_per_exit is not None:
        expected = float(sum(r * m for r, m in zip(fp32.exit_rates, macs_per_exit)))
    fp32_block = None
    if fp32 is not None:
        fp32_block = {"accuracy": fp32.accuracy, "n_samples": fp32.n_samples, **dict(fp32_checks or {})}
    int8_block = None
    if int8 is not None:
        int8_block = {"accuracy": int8.accuracy, "n_samples": int8.n_samples, **dict(int8_checks or {})}
    return {
        "format": FORMAT,
        "producer": f"edgenas {__version__}",
        "n_exits": n_exits,
        "n_classes": int(n_classes),
        "input_shape": list(stages[0].input_shape),
        "thresholds": [float(t) for t in thresholds],
        "exit_rule": EXIT_RULE,
        "stages": [s.to_dict() for s in stages],
        "exits": exits,
        "expected_macs": expected,
        "files": dict(files or {}),
        "fp32": fp32_block,
        "int8": int8_block,
        "meta": dict(meta or {}),
    }


def write_exits_json(out_dir: Path, document: Mapping[str, Any]) -> Path:
    """Write `out_dir/exits.json` atomically (fileio.atomic_write_json), keys in the document's order."""
    return atomic_write_json(Path(out_dir) / EXITS_FILE, document, indent=2, sort_keys=False,
                             default=str)  # meta may hold paths


def read_exits_json(path: Path) -> dict:
    """Load and sanity-check an exits.json (a file or the export folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / EXITS_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgenasError(f"{path} does not exist", "run `edgenas export` first or point at an export folder")
    except json.JSONDecodeError as e:
        raise EdgenasError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})", "re-run `edgenas export`")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise EdgenasError(f"{path} is not an {FORMAT} file", "re-run `edgenas export` with this edgenas version")
    for key in ("n_exits", "n_classes", "input_shape", "thresholds", "stages", "exits"):
        if key not in doc:
            raise EdgenasError(f"{path} lacks the field {key!r}", "re-run `edgenas export`")
    if len(doc["stages"]) != doc["n_exits"] or len(doc["thresholds"]) != doc["n_exits"] - 1:
        raise EdgenasError(f"{path} is inconsistent: n_exits does not match stages/thresholds",
                           "re-run `edgenas export`")
    return doc
