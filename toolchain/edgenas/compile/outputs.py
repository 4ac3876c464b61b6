"""Where a compile writes, and what it leaves behind when it fails.

    with OutputFolder(out_dir, keep_failed=False) as work:   # parents created, work.tmp = the project being built
        with work.captured_log():                               # TVM/LLVM's native stderr and warnings -> build.log
            ...build into work.tmp...
        publish_project(work.tmp, out_dir, ...)                  # report files, then rename into place
        work.published = True                                   # (or work.keep() for a failed one, --keep-failed)

A compile that fails leaves nothing: the temporary project and every parent folder it created are removed. The
build log goes with the project on success; on failure, when it holds anything, it is moved to the system's temp
folder (not beside --out: bad input leaves nothing in the user's folders) and its path is added to the error.

Shared by both compilers (`mcu`, `host`): the checks before a build (`check_target_kind`, `check_replaceable`), the
files every compiled folder holds (`reference_document`, `publish_project`) and the digest `sha256_of` that the
report records for the files `profile` loads.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from edgenas.errors import EdgenasError
from edgenas.fileio import missing_folders, nearest_existing, publish_folder, remove_created, temp_folder

LOG_FILE = "build.log"
REFERENCE_FILE = "reference.json"


class OutputFolder:
    """A temporary project beside `out_dir`, created up front so that an unwritable --out fails before the build."""

    def __init__(self, out_dir: Path, keep_failed: bool = False):
        self.out_dir = Path(out_dir)
        self.keep_failed = keep_failed
        self.created = missing_folders(self.out_dir.parent)
        existing = nearest_existing(self.out_dir)
        if not existing.is_dir():
            raise EdgenasError(f"cannot write the output folder {self.out_dir}: {existing} is a file, not a folder",
                               "pass an --out in a writable folder")
        try:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = temp_folder(self.out_dir)
        except OSError as exc:
            remove_created(self.created)
            where = exc.filename or self.out_dir.parent
            if Path(where).name.startswith(f".{self.out_dir.name}."):  # the temp project: name the folder it is in
                where = self.out_dir.parent
            raise EdgenasError(f"cannot write the output folder {self.out_dir}: {exc.strerror or exc} ({where})",
                               "pass an --out in a writable folder") from None
        self.log = self.tmp / LOG_FILE
        self.log.touch()
        self.published = False

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or self.published:
            return
        log_note = self._save_log()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if not self.out_dir.exists():
            remove_created(self.created)
        _add_note(exc, log_note)

    def _save_log(self) -> str:
        """Move a non-empty build log out of the folder about to be deleted; returns a note naming it."""
        if not self.log.is_file() or self.log.stat().st_size == 0:
            return ""
        fd, kept = tempfile.mkstemp(prefix=f"edgenas-compile-{self.out_dir.name}-", suffix=".log")
        os.close(fd)
        shutil.move(str(self.log), kept)
        return f"TVM and compiler messages are in {kept}"

    def keep(self) -> Path:
        """--keep-failed: move the failed project to out_dir (replacing an earlier one) and return it."""
        publish_folder(self.tmp, self.out_dir)
        self.published = True
        return self.out_dir

    def captured_log(self):
        """Third-party output while building -> the project's build log (see `captured_stderr`)."""
        return captured_stderr(self.log)


@contextlib.contextmanager
def captured_stderr(log_path: Path):
    """Send what third-party code prints to `log_path`: TVM's C++ logging and LLVM write to file descriptor 2 from
    native code, so the descriptor itself is redirected, and Python's warnings and logging (which write to
    sys.stderr) with it."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    with open(log_path, "a", buffering=1) as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stderr(log), warnings.catch_warnings():
                warnings.simplefilter("default")
                yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _add_note(exc: BaseException | None, note: str) -> None:
    if isinstance(exc, EdgenasError) and note:
        exc.fix = f"{exc.fix}; {note}" if exc.fix else note
        exc.args = (exc.line(),)


def check_writable(out_dir: Path) -> None:
    """Fail now, with one line, when `out_dir` cannot be created (before a long build); leaves nothing behind."""
    probe = OutputFolder(out_dir)
    shutil.rmtree(probe.tmp, ignore_errors=True)
    remove_created(probe.created)


@contextlib.contextmanager
def external_build(out_dir: Path):
    """Around a builder that writes `out_dir` itself (compile_host): parent folders it creates are removed when it
    fails, and third-party output goes to a log that ends as out_dir/build.log (in the temp folder on failure)."""
    out_dir = Path(out_dir)
    created = missing_folders(out_dir.parent)
    fd, log = tempfile.mkstemp(prefix=f"edgenas-compile-{out_dir.name}-", suffix=".log")
    os.close(fd)
    log = Path(log)
    try:
        with captured_stderr(log):
            yield
    except BaseException as exc:
        if not out_dir.exists():
            remove_created(created)
        if log.stat().st_size:
            _add_note(exc, f"TVM and compiler messages are in {log}")
        else:
            log.unlink()
        raise
    shutil.move(str(log), out_dir / LOG_FILE)


# ------------------------------------------------------------------------------------------------ both compilers
def check_target_kind(target, kinds: tuple[str, ...], what_else: str, fix: str) -> None:
    """Refuse a target whose kind this compiler does not build; `what_else` ends the problem's sentence."""
    if target.kind not in kinds:
        raise EdgenasError(f"target {target.name} is a {target.kind} target{what_else}", fix)


def check_replaceable(out_dir: Path, report_file: str, folder_kind: str) -> None:
    """An existing `out_dir` is replaced only when it is empty or an earlier folder of this compiler (it holds
    `report_file`): anything else would be deleted."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / report_file).exists())):
        raise EdgenasError(f"{out_dir} exists and is not an edgenas {folder_kind} folder",
                           f"choose a new output folder (an earlier {folder_kind} folder is replaced)")


def reference_document(x, ref_logits, ref_exits, **extra) -> dict:
    """reference.json: the embedded test inputs and onnxruntime's outputs for them (what `profile` checks against)."""
    return {"inputs": x.reshape(x.shape[0], -1).tolist(), **extra, "logits": ref_logits.tolist(),
            "exits": ref_exits.tolist(), "source": "onnxruntime, stage chain, exit rule in float32"}


def publish_project(tmp: Path, out_dir: Path, report_file: str, report: dict, reference: dict) -> None:
    """Write the report and reference.json into the finished project, then rename it into place (atomic)."""
    (tmp / report_file).write_text(json.dumps(report, indent=2) + "\n")
    (tmp / REFERENCE_FILE).write_text(json.dumps(reference) + "\n")
    publish_folder(tmp, out_dir)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
