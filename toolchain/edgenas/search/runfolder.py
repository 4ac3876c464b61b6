"""The run folder: everything a search writes, written atomically, readable by export/compile and by `--resume`.

  config.json      settings + versions (enough to reproduce)
  supernet.pt      trained supernet weights (state_dict; loaded with weights_only=True)
  archive.jsonl    one line per evaluated candidate, appended and fsync'ed as soon as it is evaluated
  pareto.json      ids of the Pareto members + hypervolume
  pareto.png       error vs expected latency
  report.md        human-readable summary
  finetuned.jsonl  one line per fine-tuned Pareto member (the figures of the weights that ship), appended as above
  checkpoints/candidate_<id>.pt   deployable weights of every Pareto member (arch + thresholds + state_dict;
                   "weights": "finetuned" or "inherited")
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from edgenas.errors import EdgenasError

ARCHIVE = "archive.jsonl"
CONFIG = "config.json"
PARETO = "pareto.json"
SUPERNET = "supernet.pt"
CHECKPOINTS = "checkpoints"
FINETUNED = "finetuned.jsonl"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(path: Path, obj) -> None:
    import io

    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class RunFolder:
    def __init__(self, path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return self.file(CONFIG).is_file()

    def append_record(self, record: dict, name: str = ARCHIVE) -> None:
        """One JSON line per candidate; a crash mid-write leaves at most a truncated last line, ignored on read."""
        with open(self.file(name), "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_archive(self, name: str = ARCHIVE) -> list[dict]:
        """The records of a JSON-lines file of the run (the archive, or finetuned.jsonl)."""
        path = self.file(name)
        if not path.is_file():
            return []
        records = []
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break  # killed while writing the last line: that candidate is re-evaluated
                raise EdgenasError(f"{path}: line {i + 1} is not valid JSON",
                                   f"{path.name} is corrupt; restore it or start a new run with another --out")
        return records

    def rewrite_archive(self, records: list[dict]) -> None:
        atomic_write_bytes(self.file(ARCHIVE), "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())

    def read_config(self) -> dict:
        return read_json(self.file(CONFIG), "run config")

    def checkpoint_path(self, cand_id: int) -> Path:
        return self.path / CHECKPOINTS / f"candidate_{cand_id}.pt"


def read_json(path: Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise EdgenasError(f"{what} not found: {path}", "check the path (is this a run folder written by `edgenas search`?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgenasError(f"{path} is not valid JSON ({exc})", "the file is corrupt; re-run the step that wrote it") from None
