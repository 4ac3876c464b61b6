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
  .lock            flock'ed by the search that writes the folder (a second search on it is refused)
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from edgenas.errors import EdgenasError
from edgenas.paths import naming_path

ARCHIVE = "archive.jsonl"
CONFIG = "config.json"
PARETO = "pareto.json"
SUPERNET = "supernet.pt"
CHECKPOINTS = "checkpoints"
FINETUNED = "finetuned.jsonl"
LOCK = ".lock"


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
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise naming_path(exc, path) from None
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
        try:
            with open(self.file(name), "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise naming_path(exc, self.file(name)) from None

    def read_archive(self, name: str = ARCHIVE, required: tuple[str, ...] = ()) -> list[dict]:
        """The records of a JSON-lines file of the run (the archive, or finetuned.jsonl); every record is an object
        holding an integer "id" and the `required` keys."""
        path = self.file(name)
        if not path.is_file():
            return []
        records = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise EdgenasError(f"{path} is not UTF-8 text", f"{path.name} is corrupt; restore it or start a new run "
                               "with another --out") from None
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break  # killed while writing the last line: that candidate is re-evaluated
                raise EdgenasError(f"{path}: line {i + 1} is not valid JSON",
                                   f"{path.name} is corrupt; restore it or start a new run with another --out") from None
            missing = ([] if not isinstance(record, dict) else
                       [k for k in ("id", *required) if k not in record or (k == "id" and type(record[k]) is not int)])
            if not isinstance(record, dict) or missing:
                what = "is not a JSON object" if not isinstance(record, dict) else "lacks " + ", ".join(missing)
                raise EdgenasError(f"{path}: line {i + 1} {what}",
                                   f"{path.name} is corrupt; restore it or start a new run with another --out")
            records.append(record)
        return records

    def cut_torn_tail(self, name: str = ARCHIVE) -> int:
        """Cut the last line of a JSON-lines file when a kill tore it (no newline, or not valid JSON), so that the
        next append starts on a line of its own. Returns the number of bytes cut (0: the file was whole)."""
        path = self.file(name)
        if not path.is_file():
            return 0
        data = path.read_bytes()
        body = data[:-1] if data.endswith(b"\n") else data
        start = body.rfind(b"\n") + 1  # the last line: body[start:]
        if not body[start:]:
            return 0
        if data.endswith(b"\n"):
            try:
                json.loads(body[start:])
                return 0
            except (json.JSONDecodeError, UnicodeDecodeError):
                pass
        with open(path, "r+b") as f:
            f.truncate(start)
            f.flush()
            os.fsync(f.fileno())
        return len(data) - start

    @contextlib.contextmanager
    def locked(self):
        """Hold an exclusive lock on the folder (flock on .lock, released when the process ends, even by a kill)."""
        import fcntl
        fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EdgenasError(f"run folder {self.path} is in use by another edgenas search",
                                   "wait for that search to finish, or choose another --out") from None
            yield self
        finally:
            os.close(fd)

    def rewrite_archive(self, records: list[dict]) -> None:
        atomic_write_bytes(self.file(ARCHIVE), "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())

    def read_config(self) -> dict:
        return read_json(self.file(CONFIG), "run config", dict)

    def checkpoint_path(self, cand_id: int) -> Path:
        return self.path / CHECKPOINTS / f"candidate_{cand_id}.pt"


def read_json(path: Path, what: str, kind: type | None = None):
    """The JSON value of a file; kind (dict, list): the value must be one (files of a run folder are untrusted)."""
    path = Path(path)
    if not path.is_file():
        raise EdgenasError(f"{what} not found: {path}", "check the path (is this a run folder written by `edgenas search`?)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgenasError(f"{path} is not valid JSON ({exc})", "the file is corrupt; re-run the step that wrote it") from None
    if kind is not None and not isinstance(value, kind):
        raise EdgenasError(f"{path} is not a JSON {'object' if kind is dict else kind.__name__}",
                           "the file is corrupt; re-run the step that wrote it")
    return value
