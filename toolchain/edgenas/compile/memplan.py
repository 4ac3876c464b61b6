"""Static activation memory: one arena for the whole stage chain, offsets planned from buffer lifetimes.

The stages of an early-exit network run one after another, so their kernel calls form one timeline: stage 0's
calls, stage 0's exit decision, stage 1's calls, ... Every kernel output is a buffer that lives from the call that
writes it to the last step that reads it. Views (reshapes) share their base buffer's bytes and extend its life. A
stage's outputs (logits, conf) are read by the exit decision after its last call; its `h_out` is the next stage's
input, so it lives until that stage's last reader. The input image is the caller's buffer and is not in the arena.

Offsets: greedy (a few placement orders tried: by size, by birth, by lifetime; the smallest arena is kept), each buffer at the lowest aligned offset that does not overlap any already
placed buffer whose lifetime intersects its own. The arena size is then close to the peak of live bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from edgenas.compile.lowering import StageProgram

ALIGN = 16


@dataclass(frozen=True)
class Lifetime:
    name: str
    size: int
    first: int  # step that writes it
    last: int   # last step that reads it


@dataclass(frozen=True)
class ArenaPlan:
    size: int                       # bytes of the arena
    offsets: Mapping[str, int]      # buffer (or view / chained stage input) -> byte offset in the arena
    lifetimes: tuple[Lifetime, ...]
    peak_live_bytes: int            # largest sum of live buffer sizes at one step (the lower bound of `size`)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def root_of(programs: Sequence[StageProgram], name: str) -> str:
    """The arena buffer that holds a tensor: views resolve to their base, stage i>0's input to h_out of i-1."""
    index = int(name[1:name.index("_")])
    spec = programs[index].tensors[name]
    if spec.role == "view":
        return root_of(programs, spec.base)
    if spec.role == "input" and index > 0:
        return root_of(programs, programs[index - 1].outputs[0])
    return name


def lifetimes(programs: Sequence[StageProgram]) -> list[Lifetime]:
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    step = 0
    for prog in programs:
        for call in prog.calls:
            for t in call.inputs:
                spec = prog.tensors[t]
                if spec.role in ("const",) or (spec.role == "input" and prog.index == 0):
                    continue
                r = root_of(programs, t)
                last[r] = max(last.get(r, step), step)
            for t in call.outputs:
                first[t] = step
                last.setdefault(t, step)
            step += 1
        for t in prog.outputs:  # the exit decision reads logits and conf; h_out is read by the next stage
            spec = prog.tensors[t]
            if spec.role not in ("const", "input"):
                r = root_of(programs, t)
                last[r] = max(last[r], step)
        step += 1
    sizes = {name: spec.nbytes for prog in programs for name, spec in prog.tensors.items() if spec.role == "buffer"}
    return [Lifetime(n, sizes[n], first[n], last[n]) for n in first]


# Placement orders tried; the smallest arena wins (greedy by size alone can leave holes the peak does not need).
_ORDERS = (lambda s: (-s.size, s.first, s.name), lambda s: (s.first, -s.size, s.name),
           lambda s: (-(s.last - s.first), -s.size, s.name), lambda s: (-s.size * (s.last - s.first + 1), s.name))


def _place(spans: Sequence[Lifetime], order) -> tuple[int, dict[str, int]]:
    placed: list[tuple[int, int, Lifetime]] = []  # (offset, aligned size, lifetime)
    offsets: dict[str, int] = {}
    for lt in sorted(spans, key=order):
        size = _align(max(lt.size, 1))
        busy = sorted((o, o + s) for o, s, other in placed if other.first <= lt.last and lt.first <= other.last)
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        placed.append((offset, size, lt))
        offsets[lt.name] = offset
    return max([o + s for o, s, _ in placed] + [0]), offsets


def plan_arena(programs: Sequence[StageProgram]) -> ArenaPlan:
    spans = lifetimes(programs)
    size, offsets = min((_place(spans, order) for order in _ORDERS), key=lambda p: p[0])
    for prog in programs:  # views and chained inputs point into their root's bytes
        for name, spec in prog.tensors.items():
            if spec.role == "view" or (spec.role == "input" and prog.index > 0):
                offsets[name] = offsets[root_of(programs, name)]
    n_steps = max([s.last for s in spans] + [0]) + 1
    peak = max([sum(s.size for s in spans if s.first <= t <= s.last) for t in range(n_steps)] + [0])
    return ArenaPlan(size=size, offsets=offsets, lifetimes=tuple(spans), peak_live_bytes=peak)
