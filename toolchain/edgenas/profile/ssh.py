"""Profile a Cortex-A build (`edgenas compile --target rpi4`) on the board over ssh.

    profile = profile_ssh("build/", load_target("rpi4"), "pi@raspberrypi.local")

The build folder's library, ONNX model and reference, plus `runner.py` and the `agreement.py` and `timing.py` it
imports, are copied into a fresh temporary folder on the board (scp), the runner is started there with the board's
Python (ssh), and its JSON is copied back; the remote folder is removed afterwards. The board needs numpy, onnxruntime
and apache-tvm (aarch64 wheels exist on PyPI); an engine that is missing there is reported as an error (`runtime`
"ort" or "tvm" measures, and needs, only that one).

Every command is an argument list (no local shell). ssh hands the remote command to the remote user's shell, so each
remote argument is quoted with shlex.quote. The transport is a small class: `SshTransport` for a board,
`LocalTransport` for the same steps on this machine (tests, or a board you are logged in to).
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from edgenas.errors import EdgenasError
from edgenas.profile.tvm_build import (DEFAULT_CI, DEFAULT_MAX_SECONDS, DEFAULT_REPEATS, check_artefact, check_profile,
                                      validate_threads, validate_timing)
from edgenas.targets import as_target

RUNNER = Path(__file__).with_name("runner.py")
AGREEMENT = Path(__file__).parent.parent / "agreement.py"  # the runner's two edgenas imports
TIMING = Path(__file__).with_name("timing.py")
SHIPPED = ("model.so", "model.onnx", "reference.json", "build.json")


class SshTransport:
    """scp/ssh to `destination` ("user@host"); BatchMode: keys or an agent, never a password prompt."""

    def __init__(self, destination: str, port: int | None = None, identity: str | None = None,
                 connect_timeout_s: int = 10, ssh: str = "ssh", scp: str = "scp"):
        if not destination or destination.startswith("-") or any(c.isspace() for c in destination):
            raise EdgenasError(f"bad ssh destination '{destination}'", "use --device ssh:USER@HOST")
        self.destination, self.port, self.identity = destination, port, identity
        self.ssh, self.scp = ssh, scp
        self.options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout_s}"]
        self.python = "python3"

    @property
    def name(self) -> str:
        return f"ssh:{self.destination}"

    def _common(self, port_flag: str) -> list[str]:
        out = list(self.options)
        if self.port:
            out += [port_flag, str(self.port)]
        if self.identity:
            out += ["-i", str(self.identity)]
        return out

    def _call(self, cmd: list[str], what: str, timeout_s: float) -> subprocess.CompletedProcess:
        tool = cmd[0]
        if shutil.which(tool) is None:
            raise EdgenasError(f"{tool} not found", "install the Debian package openssh-client")
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise EdgenasError(f"{what} on {self.destination} did not finish in {timeout_s:g} s",
                               "check the board, or raise the timeout") from None
        if out.returncode == 255:
            raise EdgenasError(f"cannot reach {self.destination} ({what}): {_tail(out)}",
                               "check the host name and that `ssh USER@HOST true` works without a password")
        return out

    def run(self, argv: Sequence[str], timeout_s: float = 600.0) -> subprocess.CompletedProcess:
        remote = " ".join(shlex.quote(str(a)) for a in argv)
        return self._call([self.ssh, *self._common("-p"), self.destination, "--", remote], argv[0], timeout_s)

    def make_dir(self) -> str:
        out = self.run(["mktemp", "-d", "/tmp/edgenas-profile.XXXXXX"], 60)
        if out.returncode != 0 or not out.stdout.strip():
            raise EdgenasError(f"cannot create a folder on {self.destination}: {_tail(out)}", "check /tmp on the board")
        return out.stdout.strip()

    def put(self, local: Path, remote_dir: str, timeout_s: float = 600.0) -> None:
        out = self._call([self.scp, *self._common("-P"), "-q", "-r", str(local), f"{self.destination}:{remote_dir}/"],
                         "scp", timeout_s)
        if out.returncode != 0:
            raise EdgenasError(f"copying {local} to {self.destination} failed: {_tail(out)}", "check free space")

    def get(self, remote: str, local: Path, timeout_s: float = 600.0) -> None:
        out = self._call([self.scp, *self._common("-P"), "-q", f"{self.destination}:{remote}", str(local)],
                         "scp", timeout_s)
        if out.returncode != 0:
            raise EdgenasError(f"copying {remote} back from {self.destination} failed: {_tail(out)}",
                               "see the runner's output above")

    def remove(self, remote_dir: str) -> None:
        self.run(["rm", "-rf", remote_dir], 60)


class LocalTransport:
    """The same steps on this machine: a temp folder, copies, the runner in a subprocess with this Python."""

    name = "local"

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable

    def run(self, argv: Sequence[str], timeout_s: float = 600.0) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise EdgenasError(f"{argv[0]} did not finish in {timeout_s:g} s", "raise the timeout") from None

    def make_dir(self) -> str:
        return tempfile.mkdtemp(prefix="edgenas-profile.")

    def put(self, local: Path, remote_dir: str, timeout_s: float = 600.0) -> None:
        dst = Path(remote_dir) / Path(local).name
        if Path(local).is_dir():
            shutil.copytree(local, dst)
        else:
            shutil.copyfile(local, dst)

    def get(self, remote: str, local: Path, timeout_s: float = 600.0) -> None:
        try:
            shutil.copyfile(remote, local)
        except FileNotFoundError:
            raise EdgenasError(f"{remote} was not written", "see the runner's output") from None

    def remove(self, remote_dir: str) -> None:
        shutil.rmtree(remote_dir, ignore_errors=True)


def _tail(out: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (out.stderr + out.stdout).splitlines() if ln.strip()]
    return " | ".join(lines[-3:])[:300] or f"exit code {out.returncode}"


def parse_device(device: str) -> SshTransport:
    """`ssh:USER@HOST` or `ssh:USER@HOST:PORT` -> an SshTransport."""
    if not device.startswith("ssh:"):
        raise EdgenasError(f"device '{device}' is not an ssh device", "use --device ssh:USER@HOST[:PORT]")
    dest = device[len("ssh:"):]
    port = None
    if dest.count(":") == 1 and dest.rsplit(":", 1)[1].isdigit():
        dest, p = dest.rsplit(":", 1)
        port = int(p)
    return SshTransport(dest, port=port)


def profile_ssh(artefact, target, device: str | SshTransport | LocalTransport,
                threads: Sequence[int | str] = (1, "max"), repeats: int = DEFAULT_REPEATS,
                python: str | None = None, timeout_s: float = 1800.0, check: bool = True, rel_ci: float = DEFAULT_CI,
                max_seconds: float | None = DEFAULT_MAX_SECONDS, runtime: str = "both") -> dict:
    """Copy the build folder and runner.py to the device, run them there, return the device's profile JSON.

    `device`: "ssh:USER@HOST[:PORT]" or a transport object. `threads`: "max" is the device's CPU count.
    `repeats`, `rel_ci`, `max_seconds`, `runtime`: as for `profile_host` (the timing protocol runs on the device).
    """
    import json

    target = as_target(target)
    check_artefact(artefact, target)
    transport = parse_device(device) if isinstance(device, str) else device
    engines = validate_timing(repeats, rel_ci, max_seconds, runtime)
    spec = ",".join(str(t) for t in validate_threads(threads))
    remote = transport.make_dir()
    try:
        with tempfile.TemporaryDirectory(prefix="edgenas-ship-") as tmp:
            ship = Path(tmp) / "artefact"
            ship.mkdir()
            for name in SHIPPED:
                shutil.copyfile(Path(artefact) / name, ship / name)
            transport.put(ship, remote)
            transport.put(RUNNER, remote)
            transport.put(AGREEMENT, remote)
            transport.put(TIMING, remote)
            out_remote = f"{remote}/profile.json"
            run = transport.run([python or transport.python, f"{remote}/runner.py", f"{remote}/artefact",
                                 "--threads", spec, "--repeats", str(repeats), "--ci", repr(float(rel_ci)),
                                 "--max-seconds", repr(float(max_seconds or 0)), "--engines", ",".join(engines),
                                 "--out", out_remote], timeout_s)
            if run.returncode != 0:
                raise EdgenasError(f"the profiling runner failed on {transport.name}: {_tail(run)}",
                                   "the board needs python3 with numpy, onnxruntime and apache-tvm")
            local = Path(tmp) / "profile.json"
            transport.get(out_remote, local)
            doc = json.loads(local.read_text())
    finally:
        transport.remove(remote)
    doc = {"device": transport.name, "target": target.name, "artefact": str(Path(artefact).resolve()), **doc}
    return check_profile(doc) if check else doc
