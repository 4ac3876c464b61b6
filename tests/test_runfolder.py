"""Run folders under kills, concurrent searches and full disks: a torn last line is cut before resuming, a second
search on a folder is refused, and a write that fails is one line with exit code 2 that leaves nothing behind.
(Bad run folders that a table row can express are in test_bad_inputs.py.)"""
import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from edgenas import api
from edgenas.cli import main as cli_main
from edgenas.errors import EdgenasError
from edgenas.search.driver import SearchConfig
from edgenas.search.runfolder import RunFolder
from tests.tiny_settings import TINY, stable


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def one_error_line(capsys) -> str:
    """The one error line on stderr, after any progress lines (a search reports its training there)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("error:")] == err[-1:], err
    return err[-1]


class NotesUI:
    """A quiet UI that keeps the notes (one line each) the search prints."""

    def __init__(self):
        from edgenas.ui import QuietUI
        self.quiet, self.notes = QuietUI(), []

    def task(self, description, total):
        return self.quiet.task(description, total)

    def note(self, message):
        self.notes.append(message)


@pytest.mark.parametrize("content, cut, lines_kept", [
    (b'{"id": 0}\n{"id": 1}\n', 0, 2),          # whole: nothing cut
    (b'{"id": 0}\n{"id": 1', 8, 1),             # killed mid-line
    (b'{"id": 0}\n{"id": 1}', 9, 1),            # killed before the newline: the record is made again
    (b'{"id": 0}\n{"id"\n', 6, 1),              # a torn line that got its newline
    (b'{"id', 4, 0),                            # the only line torn
    (b'', 0, 0),
])
def test_cut_torn_tail_leaves_whole_lines_that_the_next_append_continues(tmp_path, content, cut, lines_kept):
    folder = RunFolder(tmp_path)
    (tmp_path / "archive.jsonl").write_bytes(content)
    assert folder.cut_torn_tail() == cut
    folder.append_record({"id": 7, "key": "k"})
    records = folder.read_archive(required=("key",) if lines_kept == 0 else ())
    assert len(records) == lines_kept + 1 and records[-1] == {"id": 7, "key": "k"}
    assert (tmp_path / "archive.jsonl").read_bytes().endswith(b'"k"}\n')


@pytest.mark.e2e
def test_resume_after_a_kill_mid_write_cuts_the_torn_lines_and_completes_the_run(tiny_run, tmp_path):
    """A kill while appending leaves half a record without its newline: the resumed run says so, cuts it, re-makes
    that record and leaves valid JSON-lines files equal to the uninterrupted run's (a later --resume reads them)."""
    run, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    archive_lines = (run / "archive.jsonl").read_text().splitlines(keepends=True)
    assert len(archive_lines) >= 4
    (copy / "archive.jsonl").write_text("".join(archive_lines[:3]) + archive_lines[3][:len(archive_lines[3]) // 2])
    tuned = (run / "finetuned.jsonl").read_text()
    (copy / "finetuned.jsonl").write_text(tuned + tuned.splitlines()[0][:20])
    ui = NotesUI()
    result = api.search(config=TINY, out=copy, seed=0, resume=True, workers=1, ui=ui)
    torn = [n for n in ui.notes if "torn" in n]
    assert len(torn) == 2 and "archive.jsonl" in torn[0] and "finetuned.jsonl" in torn[1], ui.notes
    assert result.new_evaluations == len(archive_lines) - 3
    assert stable(jsonl(copy / "archive.jsonl")) == stable(jsonl(run / "archive.jsonl"))
    assert stable(jsonl(copy / "finetuned.jsonl")) == stable(jsonl(run / "finetuned.jsonl"))
    again = api.search(config=TINY, out=copy, seed=0, resume=True, workers=1, ui=NotesUI())
    assert again.new_evaluations == 0


def cli_resumable_copy(run: Path, dest: Path) -> Path:
    """A copy of the tiny run with the config.json `search --dataset digits` writes, so the CLI can --resume it."""
    shutil.copytree(run, dest)
    versions = json.loads((dest / "config.json").read_text())["versions"]
    (dest / "config.json").write_text(json.dumps({**SearchConfig(dataset="digits").to_dict(), "versions": versions}))
    return dest


@pytest.mark.e2e
def test_a_second_search_on_a_run_folder_in_use_is_one_line_exit_2(tiny_run, tmp_path, capsys):
    copy = cli_resumable_copy(tiny_run[0], tmp_path / "run")
    before = snapshot(copy)
    with RunFolder(copy).locked():  # what the first search holds while it runs
        code = cli_main(["search", "--out", str(copy), "--resume", "--dataset", "digits"])
        assert code == 2
        assert "in use by another edgenas search" in one_error_line(capsys)
        with pytest.raises(EdgenasError, match="in use"):  # the library refuses too
            api.search(config=SearchConfig(dataset="digits"), out=copy, seed=0, resume=True)
    assert snapshot(copy) == before
    with RunFolder(copy).locked():  # released when the search that held it ends
        pass


def fail_fsync_of(name: str, monkeypatch) -> None:
    """Make the fsync of a file called `name` (or a temp file written for it) fail as on a full disk."""
    real_fsync = os.fsync

    def fsync(fd):
        if name in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.e2e
def test_disk_full_after_training_the_supernet_is_one_line_and_removes_the_new_folder(tmp_path, capsys, monkeypatch):
    fail_fsync_of("supernet.pt", monkeypatch)
    out = tmp_path / "new" / "runs" / "run"
    code = cli_main(["search", "--out", str(out), "--dataset", "digits", "--supernet-steps", "1", "--workers", "1"])
    assert code == 2
    line = one_error_line(capsys)
    assert "No space left on device" in line and "supernet.pt" in line
    assert not (tmp_path / "new").exists()


@pytest.mark.e2e
def test_disk_full_during_export_is_one_line_and_removes_the_folders_it_created(tiny_run, tmp_path, capsys,
                                                                                monkeypatch):
    import edgenas.export.onnx_export as onnx_export

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(onnx_export, "write_exits_json", full_disk)
    out = tmp_path / "new" / "a" / "b" / "e"
    code = cli_main(["export", str(tiny_run[0]), "--out", str(out)])
    assert code == 2
    line = one_error_line(capsys)
    assert "No space left on device" in line and str(Path("b") / "e") in line
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_search_out_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """Read-only or forbidden --out (as root, chmod does not forbid: the mkdir fails as it would)."""
    real_mkdir = Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):
        if tmp_path in self.parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)
    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    code = cli_main(["search", "--out", str(tmp_path / "ro" / "run"), "--dataset", "digits"])
    assert code == 2
    line = one_error_line(capsys)
    assert "Read-only file system" in line and "choose a writable --out" in line
    assert list(tmp_path.iterdir()) == []


def test_disk_full_in_an_empty_out_folder_leaves_it_empty(tmp_path, capsys, monkeypatch):
    fail_fsync_of("config.json", monkeypatch)
    out = tmp_path / "empty"
    out.mkdir()
    code = cli_main(["search", "--out", str(out), "--dataset", "digits"])
    assert code == 2
    assert "config.json" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == [out] and list(out.iterdir()) == []


def test_resume_of_a_folder_without_a_run_says_that_it_starts_a_new_one(tmp_path, monkeypatch):
    fail_fsync_of("config.json", monkeypatch)  # stop right after the folder is opened
    ui = NotesUI()
    with pytest.raises(OSError):
        api.search(config=TINY, out=tmp_path / "mistyped", seed=0, resume=True, ui=ui)
    assert [n for n in ui.notes if "holds no run yet; starting a new search" in n], ui.notes
    assert not (tmp_path / "mistyped").exists()


@pytest.mark.e2e
def test_a_read_only_export_out_is_one_line_exit_2(tiny_run, tmp_path, capsys, monkeypatch):
    """As root, chmod does not forbid writing: every mkdir in the folder fails as on a read-only file system."""
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if read_only in Path(path).parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)
    monkeypatch.setattr(os, "mkdir", mkdir)
    code = cli_main(["export", str(tiny_run[0]), "--out", str(read_only / "e")])
    assert code == 2
    line = one_error_line(capsys)
    assert "Read-only file system" in line and "choose a writable --out" in line
    assert list(read_only.iterdir()) == []
