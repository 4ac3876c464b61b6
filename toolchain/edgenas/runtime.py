"""Where training runs and with how many threads: the one policy every training and evaluation phase follows.

Devices (`--device auto|cpu|cuda[:N]`):
- "cpu" is today's path, bit for bit: models and data are moved with `.to("cpu")`, a no-op, and every random draw
  (batch order, head initialisation, BN-calibration batches) comes from CPU generators whatever the device, so the
  GPU path consumes the same random streams in the same order.
- "cuda[:N]": models are built on the CPU (same initial weights), then moved; data is moved once and stays on the
  device across epochs when it fits (`data_on_device`). The same seed gives the same archive up to CUDA's
  non-deterministic kernels: `use_deterministic_kernels` switches torch to its deterministic algorithms where one
  exists (cuBLAS with a fixed workspace, deterministic index_add/scatter in the backward of indexing) and TF32 off
  (convolutions in full float32, as on the CPU); the backward of adaptive average pooling and of bilinear/nearest
  resizing has none on CUDA and accumulates with atomics, so its float sums may differ in the last bits from run to
  run (warn_only: torch warns instead of refusing).
- "auto": CUDA when torch sees a GPU, else the CPU.

Threads (a fixed count per phase kind, never the machine's core count, so the same seed gives the same result on
any machine of the same CPU kind):
- a phase that is one job (supernet training, a ZO-DARTS+ search and its retraining, the fine-tuning of the member
  `export --best` takes) runs JOB_THREADS intra-op threads: both cores of a 2-core machine;
- a phase of many independent jobs (candidate evaluation, fine-tuning the other Pareto members) runs them in
  parallel worker processes with one thread each (search.executors), one worker per core.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from edgenas.errors import EdgenasError

JOB_THREADS = 2        # intra-op threads of a phase that is one job
WORKER_THREADS = 1     # intra-op threads of each parallel worker
DATA_DEVICE_SHARE = 0.5  # data moves to the GPU when it takes at most this share of the free GPU memory


def resolve_device(spec: str | None) -> str:
    """"auto" | "cpu" | "cuda" | "cuda:N" (None = "cpu") -> a canonical device string ("cpu" or "cuda:N"); an
    unknown spec or a GPU torch cannot see is a one-line error."""
    import torch
    spec = "cpu" if spec is None else str(spec).strip().lower()
    if spec == "cpu":
        return "cpu"
    if spec == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" or spec.startswith("cuda:"):
        index = spec.partition(":")[2] or "0"
        if not index.isdigit():
            raise EdgenasError(f"--device {spec}: '{index}' is not a GPU index", "use cuda, cuda:0, cuda:1, ...")
        if not torch.cuda.is_available():
            why = (f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None else
                   f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: no NVIDIA driver or device")
            raise EdgenasError(f"--device {spec}: {why}", "use --device cpu or auto, or run on a machine with a GPU "
                               "(nvidia-smi lists it)")
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise EdgenasError(f"--device {spec}: this machine has {count} CUDA GPU{'s' * (count != 1)}",
                               f"use cuda:0 .. cuda:{count - 1}")
        return f"cuda:{int(index)}"
    raise EdgenasError(f"unknown --device '{spec}'", "use auto, cpu, cuda or cuda:N")


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def use_deterministic_kernels(device: str) -> None:
    """On CUDA, torch's deterministic algorithms where they exist (see the module docstring); nothing on the CPU,
    whose kernels are deterministic at a fixed thread count."""
    if not is_cuda(device):
        return
    import torch
    # cuBLAS is deterministic only with a fixed workspace; must be set before its first use in the process
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    # full float32, as on the CPU: cuDNN would run convolutions in TF32 (10-bit mantissa) on Ampere and later
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def data_on_device(device: str, *tensors):
    """The tensors on `device` when they fit in DATA_DEVICE_SHARE of its free memory (they then stay there across
    epochs), else unchanged on the CPU: the caller moves each batch. On the CPU: the tensors themselves."""
    if not is_cuda(device):
        return tensors
    import torch
    need = sum(t.element_size() * t.nelement() for t in tensors)
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    if need > DATA_DEVICE_SHARE * free:
        return tensors
    return tuple(t.to(device) for t in tensors)


def module_device(module) -> str:
    """The device a module's parameters are on ("cpu" for a module without any): where its inputs must go."""
    p = next(module.parameters(), None)
    return "cpu" if p is None else str(p.device)


def batch_on(device: str, idx, *tensors):
    """`tensors[idx]` on `device`, for tensors data_on_device either moved there or left on the CPU: the (CPU)
    index goes to where each tensor lives, the batch then to `device`; every `.to` is a no-op on the CPU path."""
    return tuple(t[idx.to(t.device)].to(device) for t in tensors)


@contextmanager
def torch_threads(n: int):
    """Run the block with `n` intra-op threads, restoring the caller's count after."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_count() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
