"""Keyword-argument tables of the environments: one :class:`Setting` per kwarg, with its
default, checked once. The table is the one source of an env's keywords: its ``__init__``
signature is made from it (:func:`table_signature`, :func:`bind_settings`: what ``help()``
and editors show), and tests/test_settings_table.py checks every env's signature against it.

Every kwarg an env takes is declared with its type and range; :func:`check_settings` refuses
a wrong type (``flops_budget=True``, ``channel_round=2.5``, ``ft_lr="0.1"``) or an
out-of-range value (``channel_round=0``) with one sentence naming the kwarg, instead of
coercing it silently. Values that pass are returned unchanged (the recovery fingerprint is
computed from them as given).

>>> from pf_envs.settings import Setting, check_settings
>>> check_settings("Toy", {"units": Setting("int", low=1)}, {"units": 0})
Traceback (most recent call last):
...
ValueError: Toy: units must be an integer >= 1, got 0
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Setting:
    """One keyword argument.

    Attributes:
        kind: ``int``, ``float``, ``bool``, ``str``, ``path`` (str or ``os.PathLike``), ``choice``
            or ``any`` (checked elsewhere).
        low / high: inclusive bounds (numbers); ``low_open`` / ``high_open`` make them strict.
        choices: allowed values of a ``choice``.
        optional: None is allowed (it means "the default for this model").
        default: the value an env uses when the kwarg is not given.
        doc: what the kwarg does (for error messages and docs).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: Sequence[Any] = ()
    optional: bool = False
    default: Any = None
    doc: str = ""

    def describe(self) -> str:
        """``an integer >= 1``, ``a number in (0, 1]``, ``one of [...]``..."""
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        if self.kind == "bool":
            return "True or False"
        if self.kind == "str":
            return "a string"
        if self.kind == "path":
            return "a path (str or os.PathLike)"
        noun = "an integer" if self.kind == "int" else "a finite number"
        if self.low is not None and self.high is not None:
            lb, rb = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{noun} in {lb}{_num(self.low)}, {_num(self.high)}{rb}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {_num(self.high)}"
        return noun


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_value(env_name: str, name: str, setting: Setting, value: Any) -> None:
    """Raise ``ValueError`` (``TypeError`` for a wrong type) if ``value`` does not fit."""
    if value is None and setting.optional:
        return
    if setting.kind == "any":
        return
    bad = f"{env_name}: {name} must be {setting.describe()}" + (" (or None)" if setting.optional else "")
    if setting.kind == "choice":
        if value not in list(setting.choices):
            raise ValueError(f"{env_name}: unknown {name} {value!r}; choose one of {list(setting.choices)}")
        return
    if setting.kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{bad}, got {value!r} ({type(value).__name__})")
        return
    if setting.kind == "path":
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{bad}, got {value!r} ({type(value).__name__})")
        return
    if setting.kind == "str":
        if not isinstance(value, str):
            raise TypeError(f"{bad}, got {value!r} ({type(value).__name__})")
        return
    if setting.kind == "int":
        if not _is_int(value):
            raise TypeError(f"{bad}, got {value!r} ({type(value).__name__})")
    elif setting.kind == "float":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{bad}, got {value!r} ({type(value).__name__})")
        if not math.isfinite(float(value)):
            raise ValueError(f"{bad}, got {value!r}")
    else:
        raise AssertionError(f"unknown setting kind {setting.kind!r}")
    x = float(value)
    if setting.low is not None and (x < setting.low or (setting.low_open and x == setting.low)):
        raise ValueError(f"{bad}, got {value!r}")
    if setting.high is not None and (x > setting.high or (setting.high_open and x == setting.high)):
        raise ValueError(f"{bad}, got {value!r}")


def plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (fingerprints and records hash what JSON
    would store: ``np.int64(4)`` and ``4`` are one setting)."""
    return value.item() if isinstance(value, np.generic) else value


def check_settings(env_name: str, table: Mapping[str, Setting], given: Mapping[str, Any]) -> None:
    """Check every kwarg of ``given`` against ``table`` (unknown names are refused too)."""
    unknown = sorted(set(given) - set(table))
    if unknown:
        raise TypeError(
            f"{env_name} got unknown keyword argument(s) {unknown}; valid ones are {sorted(table)} "
            "(see help(pf_envs.envs) or the README)"
        )
    for name, value in given.items():
        check_value(env_name, name, table[name], value)


_ANNOTATIONS = {"int": "int", "float": "float", "bool": "bool", "str": "str", "choice": "str",
                "path": "str | os.PathLike[str]", "any": "Any"}


def table_signature(table: Mapping[str, Setting], positional: Sequence[str] = ("model", "dataset"),
                    exclude: Sequence[str] = ()) -> inspect.Signature:
    """The ``__init__`` signature of an env whose keywords are ``table``: ``self``, the
    ``positional`` ones (may be given by position), every other one keyword-only, each with
    the table's default, and ``**unknown`` (refused by :func:`check_settings` with the list)."""
    par = inspect.Parameter
    params = [par("self", par.POSITIONAL_OR_KEYWORD)]
    for name, setting in table.items():
        if name in exclude:
            continue
        kind = par.POSITIONAL_OR_KEYWORD if name in positional else par.KEYWORD_ONLY
        note = _ANNOTATIONS[setting.kind] + (" | None" if setting.optional and setting.kind != "any" else "")
        params.append(par(name, kind, default=setting.default, annotation=note))
    params.sort(key=lambda p: p.kind)  # the positional ones first
    return inspect.Signature([*params, par("unknown", par.VAR_KEYWORD, annotation="Any")])


def bind_settings(signature: inspect.Signature, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``{"self": ..., every keyword: its value or default, "unknown": {...}}``: what an
    ``__init__`` written with ``signature`` would have as ``locals()`` (what the recovery
    fingerprint has always been computed from).

    Raises:
        TypeError: too many positional arguments, or one given twice.
    """
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        name = type(args[0]).__name__ if args else "the env"
        positional = [p.name for p in signature.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD][1:]
        raise TypeError(f"{name}: {exc}; only {positional} may be given by position, every other setting "
                        "by keyword") from None
    bound.apply_defaults()
    return dict(bound.arguments)
