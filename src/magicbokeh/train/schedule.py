"""Which phase trains at each step: a repeating cycle such as ``bokeh:1000,sr:1000``.

Steps are counted from 1 (step N is the N-th optimizer update). A cycle ``[(p1, n1), (p2, n2),
...]`` runs n1 steps of p1, then n2 of p2, ..., then starts again; a single-phase run is the
cycle ``[(phase, 1)]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from magicbokeh.errors import MagicBokehError

__all__ = ["PhaseCycle", "parse_cycle"]


@dataclass(frozen=True)
class PhaseCycle:
    """A repeating sequence of (phase name, number of steps)."""

    parts: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise MagicBokehError("a phase cycle needs at least one phase")
        for name, count in self.parts:
            if count < 1:
                raise MagicBokehError(f"phase {name} needs at least 1 step per cycle, got {count}")

    @property
    def length(self) -> int:
        """Steps in one full cycle."""
        return sum(count for _, count in self.parts)

    @property
    def phases(self) -> tuple[str, ...]:
        """The distinct phase names, in order of first appearance."""
        return tuple(dict.fromkeys(name for name, _ in self.parts))

    def phase_at(self, step: int) -> str:
        """The phase that runs step ``step`` (1-based)."""
        if step < 1:
            raise ValueError(f"steps are counted from 1, got {step}")
        position = (step - 1) % self.length
        for name, count in self.parts:
            if position < count:
                return name
            position -= count
        raise AssertionError("unreachable")

    def steps_in(self, phase: str, step: int) -> int:
        """How many of the steps 1..``step`` belong to ``phase``."""
        full, rest = divmod(step, self.length)
        total = full * sum(count for name, count in self.parts if name == phase)
        for name, count in self.parts:
            take = min(rest, count)
            if name == phase:
                total += take
            rest -= take
        return total

    def describe(self) -> str:
        """``bokeh:1000,sr:1000``."""
        return ",".join(f"{name}:{count}" for name, count in self.parts)


def parse_cycle(text: str, allowed: Sequence[str]) -> PhaseCycle:
    """Parse ``"bokeh:N,sr:M"``; phase names must be in ``allowed``."""
    parts = []
    for chunk in text.split(","):
        name, sep, count = chunk.strip().partition(":")
        if not sep or name not in allowed:
            raise MagicBokehError(
                f"--cycle {text!r}: each part must be PHASE:STEPS with PHASE one of "
                f"{', '.join(allowed)} (e.g. bokeh:1000,sr:1000)"
            )
        try:
            steps = int(count)
        except ValueError:
            raise MagicBokehError(f"--cycle {text!r}: {count!r} is not a whole number") from None
        parts.append((name, steps))
    return PhaseCycle(tuple(parts))
