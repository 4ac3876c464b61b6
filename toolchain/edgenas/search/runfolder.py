"""The run folder: everything a search writes, written atomically, readable by export/compile and by `--resume`.

  config.json      settings + versions (enough to reproduce)
  supernet.pt      trained supernet weights (state_dict; loaded with weights_only=True)
  archive.jsonl    one line per evaluated candidate, appended and fsync'ed as soon as it is evaluated
  pareto.json      ids of the Pareto members + hypervolume
  pareto.png       error vs expected latency
  report.md        human-readable summary
  finetuned.jsonl  one line per fine-tuned Pareto member (the figures of the weights that ship), appended as above
  int8.jsonl       --dtype int8: one line per (Pareto member, weights): int8 accuracy after post-training
                   quantisation (search/int8.py), appended as above
  checkpoints/candidate_<id>.pt   deployable weights of every Pareto member (arch + thresholds + state_dict;
                   "weights": "finetuned" or "inherited")
  .lock            flock'ed by the search that writes the folder (a second search on it is refused)
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from edgenas.errors import EdgenasError
from edgenas.search.finetune import member_view
from edgenas.search.pareto import choose_best
from edgenas.fileio import atomic_torch_save, atomic_write_json, atomic_write_text, naming_path

ARCHIVE = "archive.jsonl"
CONFIG = "config.json"
PARETO = "pareto.json"
SUPERNET = "supernet.pt"
CHECKPOINTS = "checkpoints"
FINETUNED = "finetuned.jsonl"
LOCK = ".lock"


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
        atomic_write_text(self.file(ARCHIVE), "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def write_json(self, name: str, obj) -> Path:
        """A JSON file of the run (config.json, pareto.json, ...), written atomically."""
        return atomic_write_json(self.file(name), obj)

    def write_checkpoint(self, cand_id: int, checkpoint: dict) -> Path:
        return atomic_torch_save(self.checkpoint_path(cand_id), checkpoint)

    def write_supernet(self, state_dict: dict) -> Path:
        return atomic_torch_save(self.file(SUPERNET), state_dict)

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


# ------------------------------------------------------------------------------------------- a finished run
def checkpoint_dict(space_name: str, n_classes: int, in_channels: int, record: dict, net) -> dict:
    """What `load_candidate` needs to rebuild the deployed network: architecture, exit policy (active heads, the
    deployed thresholds, the exit the network was cut after) and weights. Format 2 added `truncated_after_exit`,
    format 3 `weights` (what the weights are: "inherited" from the supernet, "finetuned", "retrained")."""
    return {"format": "edgenas-candidate/3", "space": space_name, "id": int(record["id"]), "arch": record["arch"],
            "active_exits": record["active_exits"], "thresholds": record["thresholds"],
            "truncated_after_exit": record["truncated_after_exit"], "weights": record["weights"],
            "n_classes": int(n_classes), "in_channels": int(in_channels),
            "state_dict": net.state_dict()}


def _run_members(run_dir) -> tuple[RunFolder, dict, dict[int, dict], list[dict]]:
    """(folder, config, archive records by id, Pareto members) of a finished run."""
    folder = RunFolder(run_dir)
    if not Path(run_dir).is_dir():
        raise EdgenasError(f"run folder not found: {run_dir}", "pass the --out folder of an `edgenas search` run")
    config = folder.read_config()
    # a ZO-DARTS+ run without --target records target null
    missing = [k for k, optional in (("dataset", False), ("target", True))
               if not isinstance(config.get(k), str) and not (optional and config.get(k) is None)]
    if missing:
        raise EdgenasError(f"{folder.file(CONFIG)} lacks {', '.join(missing)}",
                           "the file is corrupt; restore it or re-run the search")
    pareto = read_json(folder.file(PARETO), "pareto.json", dict)
    ids = pareto.get("members")
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise EdgenasError(f"{folder.file(PARETO)} has no list of member ids",
                           "the file is corrupt; re-run the search with --resume to rewrite it")
    if not folder.file(ARCHIVE).is_file():
        raise EdgenasError(f"archive not found: {folder.file(ARCHIVE)}",
                           "restore it, or re-run the search; the Pareto members are read from it")
    # export reads these fields of every archived member (and --best its figures)
    records = {r["id"]: r for r in folder.read_archive(required=("arch", "description", "val_accuracy",
                                                                    "latency_expected_s", "n_exits"))}
    finetuned = ({r["id"]: r for r in folder.read_archive(FINETUNED, required=("val_accuracy", "latency_expected_s"))}
                 if pareto.get("weights") == "finetuned" else {})
    members = [member_view(records[i], finetuned.get(i)) for i in ids if i in records]
    records.update({m["id"]: m for m in members})
    if not members:
        raise EdgenasError(f"{run_dir} has no Pareto members", "the search found no candidate within the budgets")
    return folder, config, records, members


def pareto_records(run_dir) -> list[dict]:
    """The Pareto members of a finished run as reported and exported (fine-tuned figures when fine-tuned, the
    archive's under "inherited"; see search.finetune.member_view)."""
    return _run_members(run_dir)[3]


def best_member(run_dir) -> tuple[dict, str]:
    """(record, one-line reason) of the Pareto member `edgenas export --best` takes (see pareto.choose_best)."""
    return choose_best(_run_members(run_dir)[3])


def load_candidate(run_dir, candidate: int | None = None):
    """(EarlyExitNet in eval mode, archive record, run config) of a Pareto member; candidate None = the best one."""
    folder, config, records, members = _run_members(run_dir)
    if candidate is None:
        record, _ = choose_best(members)
    else:
        if candidate not in records:
            raise EdgenasError(f"candidate {candidate} is not in {run_dir}/archive.jsonl",
                               f"choose one of the Pareto members: {', '.join(str(m['id']) for m in members)}")
        record = records[candidate]
    path = folder.checkpoint_path(record["id"])
    if not path.is_file():
        raise EdgenasError(f"candidate {record['id']} has no checkpoint in {path.parent}",
                           f"checkpoints exist for the Pareto members: {', '.join(str(m['id']) for m in members)}")
    net, ckpt = read_checkpoint(path, record["id"])
    # formats 1-2 predate fine-tuning: their weights are the inherited ones
    return net, {**record, "weights": ckpt.get("weights", "inherited")}, config


def read_checkpoint(path: Path, cand_id: int):
    """(deployed EarlyExitNet in eval mode on the CPU, checkpoint dict) of the candidate checkpoint `path` of candidate
    `cand_id`; a file that is not one is an EdgenasError."""
    import torch

    from edgenas.nn.early_exit import deployed_network
    from edgenas.spaces import create_space
    try:
        ckpt = torch.load(path, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise EdgenasError(f"cannot read checkpoint {path} ({type(exc).__name__})", "the file is corrupt; re-run the search with --resume to rewrite it") from None
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if not isinstance(fmt, str) or not fmt.startswith("edgenas-candidate/"):
        raise EdgenasError(f"{path} is not an edgenas candidate checkpoint",
                           "the file is corrupt or foreign; re-run the search with --resume to rewrite it")
    if ckpt.get("id") != cand_id:
        raise EdgenasError(f"{path} holds candidate {ckpt.get('id')}, not {cand_id}",
                           "the run folder is inconsistent; re-run the search with --resume to rewrite it")
    try:
        space = create_space(ckpt["space"])
        arch = space.arch_from_dict(ckpt["arch"])
        net = space.build_empty(arch, ckpt["in_channels"], ckpt["n_classes"])
        # format-1 checkpoints predate truncation: their networks always end at the final exit
        net = deployed_network(net, ckpt["active_exits"], ckpt["thresholds"], ckpt.get("truncated_after_exit"))
        net.load_state_dict(ckpt["state_dict"])
    except EdgenasError:
        raise
    except Exception as exc:  # a checkpoint is data: whatever does not fit its architecture is a corrupt file
        raise EdgenasError(f"checkpoint {path} does not match its architecture ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'})",
                           "the file is corrupt; re-run the search with --resume to rewrite it") from None
    net.eval()
    return net, ckpt
