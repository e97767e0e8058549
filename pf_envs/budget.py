"""Budgets for any monotone cost: unit value spaces, cost kinds, and AMC's clamp.

An episode assigns one value to each unit (a keep ratio, a sparsity, a bit-width). A
:class:`UnitSpace` says which values a unit may take (a range mapped linearly from the action
in ``[-1, 1]``, optionally a grid they are rounded to). A :class:`Cost` prices a whole policy
(one value per unit) and grows, or shrinks, monotonically with every unit's value; the budget
is a fraction of its :attr:`Cost.reference`.

:func:`clamp` is AMC's rule for any such cost: at step ``t`` the unit gets the value closest to
the one asked for, on the cheap side, such that the budget stays reachable with every later
unit at its cheapest value. With a grid it bisects over the grid points; without one, over
the interval. The cost kinds the methods need are here: MACs under channel keep ratios live
with the channel method (:mod:`pf_envs.envs.channel_prune`); nonzero weights under
sparsities (:class:`NonzeroWeights`), any weighted sum (:class:`LinearCost`), weight bits
under bit-widths (:class:`WeightBits`), bit-operations under weight and activation
bit-widths (:class:`BitOps`), and a measured latency table (:class:`LatencyTable`).

>>> from pf_envs.budget import UnitSpace, WeightBits, clamp
>>> spaces = [UnitSpace(2, 8, grid=tuple(range(2, 9)))] * 3
>>> cost = WeightBits([100, 50, 50], reference_bits=8)
>>> clamp(0, 8.0, [], spaces, cost, limit=0.5 * cost.reference)   # 8 bits would leave no room
4.0
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

#: Relative slack of the budget test (floating-point sums of MACs are not exact): a policy
#: may exceed the budget by this fraction of it, never more.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class UnitSpace:
    """The values one unit may take.

    Attributes:
        low: value at action -1.
        high: value at action +1 (``low < high``; for a cost that shrinks as the value grows,
            e.g. sparsity, ``high`` is the cheap end).
        grid: the allowed values, ascending, all inside ``[low, high]``; None: any value in
            the range.
    """

    low: float
    high: float
    grid: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"a unit's range needs finite low < high, got [{self.low}, {self.high}]")
        if self.grid is not None:
            if not self.grid or list(self.grid) != sorted(set(self.grid)):
                raise ValueError("a unit's grid must be a non-empty ascending sequence of distinct values")
            if self.grid[0] < self.low - 1e-12 or self.grid[-1] > self.high + 1e-12:
                raise ValueError(f"grid {self.grid} leaves the range [{self.low}, {self.high}]")

    def to_value(self, action: float) -> float:
        """The value of ``action`` in [-1, 1] (linear), before rounding."""
        return self.low + (float(action) + 1.0) / 2.0 * (self.high - self.low)

    def to_action(self, value: float) -> float:
        """The action in [-1, 1] that maps to ``value``."""
        return 2.0 * (float(value) - self.low) / (self.high - self.low) - 1.0

    def round(self, value: float) -> float:
        """The allowed value nearest to ``value`` (ties to the smaller one)."""
        if self.grid is None:
            return min(self.high, max(self.low, float(value)))
        i = bisect.bisect_left(self.grid, value)
        if i == 0:
            return self.grid[0]
        if i == len(self.grid):
            return self.grid[-1]
        below, above = self.grid[i - 1], self.grid[i]
        return above if above - value < value - below else below

    @property
    def values(self) -> tuple[float, ...]:
        """The ends of the range, or every grid point."""
        return self.grid if self.grid is not None else (self.low, self.high)

    def end(self, cheap: bool, increasing: bool) -> float:
        """The cheapest (``cheap``) or dearest allowed value under a cost that grows with the
        value (``increasing``) or shrinks with it."""
        lo, hi = self.values[0], self.values[-1]
        return (lo if increasing else hi) if cheap else (hi if increasing else lo)


@runtime_checkable
class Cost(Protocol):
    """The price of a policy (one value per unit); monotone in every unit's value.

    Attributes:
        name: what is counted (``macs``, ``nonzero_weights``, ``weight_bits``, ``bitops``,
            ``latency_ms``).
        increasing: True if the cost grows with a unit's value (keep ratio, bits), False if
            it shrinks (sparsity).
        reference: the cost the budget is a fraction of (the uncompressed model's).
    """

    name: str
    increasing: bool
    reference: float

    def __call__(self, values: Sequence[float]) -> float: ...


def _array(values: Sequence[float], n: int, what: str) -> np.ndarray:
    a = np.asarray(values, np.float64)
    if a.shape != (n,):
        raise ValueError(f"{what} takes {n} values (one per unit), got shape {a.shape}")
    return a


class NonzeroWeights:
    """Weights left after pruning: ``sum_i params_i * (1 - sparsity_i)`` (values = sparsities)."""

    name = "nonzero_weights"
    increasing = False

    def __init__(self, params: Sequence[float]) -> None:
        self.params = np.asarray(params, np.float64)
        self.reference = float(self.params.sum())

    def __call__(self, values: Sequence[float]) -> float:
        return float(self.params @ (1.0 - _array(values, len(self.params), self.name)))


class LinearCost:
    """``sum_i weights_i * value_i``, growing with every value; the reference is every unit at
    ``reference_value`` (the uncompressed model)."""

    name = "linear"
    increasing = True

    def __init__(self, weights: Sequence[float], reference_value: float = 1.0, name: str | None = None) -> None:
        self.params = np.asarray(weights, np.float64)
        self.reference = float(self.params.sum() * reference_value)
        if name is not None:
            self.name = name

    def __call__(self, values: Sequence[float]) -> float:
        return float(self.params @ _array(values, len(self.params), self.name))


class WeightBits(LinearCost):
    """Model size in bits: ``sum_i params_i * bits_i``; the reference is every weight at
    ``reference_bits`` (32: fp32; a budget of 0.125 is then PocketFlow's 4 bits on average)."""

    name = "weight_bits"

    def __init__(self, params: Sequence[float], reference_bits: float = 32.0) -> None:
        super().__init__(params, reference_bits)


class BitOps:
    """Bit-operations: ``sum_l macs_l * wbits_l * abits_l``, each layer's weight and activation
    bit-widths being two units (``weight_unit[l]``, ``act_unit[l]``; an index of ``None``
    holds that side at ``fixed_bits``). The reference is every layer at 32 x 32 bits."""

    name = "bitops"
    increasing = True

    def __init__(
        self,
        macs: Sequence[float],
        weight_unit: Sequence[int | None],
        act_unit: Sequence[int | None],
        units: int,
        fixed_bits: float = 8.0,
        reference_bits: float = 32.0,
    ) -> None:
        self.macs = np.asarray(macs, np.float64)
        if not len(self.macs) == len(weight_unit) == len(act_unit):
            raise ValueError("BitOps needs one weight unit and one activation unit per layer")
        self.weight_unit, self.act_unit = list(weight_unit), list(act_unit)
        self.units, self.fixed_bits = int(units), float(fixed_bits)
        self.reference = float(self.macs.sum() * reference_bits**2)

    def __call__(self, values: Sequence[float]) -> float:
        v = _array(values, self.units, self.name)
        w = np.asarray([self.fixed_bits if u is None else v[u] for u in self.weight_unit])
        a = np.asarray([self.fixed_bits if u is None else v[u] for u in self.act_unit])
        return float(np.sum(self.macs * w * a))


class LatencyTable:
    """Measured latency: ``overhead + sum_i table_i(value_i)``, where ``table_i`` maps some
    values of unit ``i`` to milliseconds (linear interpolation between them; it must be
    monotone in the value). The reference is every unit at its dearest tabulated value."""

    name = "latency_ms"

    def __init__(self, tables: Sequence[Mapping[float, float]], overhead_ms: float = 0.0,
                 increasing: bool = True) -> None:
        self.points = []
        for i, table in enumerate(tables):
            xs = np.asarray(sorted(table), np.float64)
            ys = np.asarray([table[x] for x in sorted(table)], np.float64)
            step = np.diff(ys) * (1 if increasing else -1)
            if len(xs) == 0 or np.any(step < 0):
                raise ValueError(f"latency table of unit {i} must be non-empty and "
                                 f"{'non-decreasing' if increasing else 'non-increasing'} in the value")
            self.points.append((xs, ys))
        self.increasing = bool(increasing)
        self.overhead = float(overhead_ms)
        self.reference = self.overhead + sum(float(ys.max()) for _, ys in self.points)

    def __call__(self, values: Sequence[float]) -> float:
        v = _array(values, len(self.points), self.name)
        return self.overhead + sum(float(np.interp(x, xs, ys)) for x, (xs, ys) in zip(v, self.points))


def policy_cost(cost: Cost, spaces: Sequence[UnitSpace], prefix: Sequence[float], rest: str = "cheap") -> float:
    """The cost of ``prefix`` (values of the first units) with every later unit at its
    cheapest (``rest="cheap"``) or dearest (``rest="dear"``) value."""
    cheap = rest == "cheap"
    tail = [s.end(cheap, cost.increasing) for s in spaces[len(prefix):]]
    return float(cost(list(prefix) + tail))


def floor_ratio(cost: Cost, spaces: Sequence[UnitSpace]) -> float:
    """The smallest reachable cost ratio: every unit at its cheapest value."""
    return policy_cost(cost, spaces, []) / cost.reference


def clamp(
    t: int,
    wanted: float,
    prefix: Sequence[float],
    spaces: Sequence[UnitSpace],
    cost: Cost,
    limit: float,
    *,
    iterations: int = 60,
) -> float:
    """AMC's clamp: ``wanted`` (an allowed value of unit ``t``) if the budget ``limit`` stays
    reachable with ``prefix`` for units ``< t`` and every later unit at its cheapest; else the
    allowed value nearest to ``wanted`` on the cheap side that keeps it reachable (the
    cheapest value if none does). Works for any cost monotone in the unit's value."""
    space = spaces[t]
    head = list(prefix[:t])
    tail = [s.end(True, cost.increasing) for s in spaces[t + 1 :]]
    slack = limit + TOLERANCE * abs(limit)

    def fits(v: float) -> bool:
        return cost(head + [v] + tail) <= slack

    if fits(wanted):
        return wanted
    cheapest = space.end(True, cost.increasing)
    if space.grid is not None:
        grid = list(space.grid)
        # candidates between the cheap end and ``wanted``, cheapest first
        if cost.increasing:
            cands = [g for g in grid if g <= wanted]
        else:
            cands = [g for g in reversed(grid) if g >= wanted]
        lo, hi = 0, len(cands) - 1  # cands[lo] is the cheapest; find the last that fits
        if not cands or not fits(cands[0]):
            return cheapest
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(cands[mid]):
                lo = mid
            else:
                hi = mid - 1
        return cands[lo]
    if not fits(cheapest):
        return cheapest
    good, bad = cheapest, wanted
    for _ in range(iterations):
        mid = 0.5 * (good + bad)
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good
