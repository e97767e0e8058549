"""One source per env keyword: each env's settings table holds every default, and its
``__init__`` signature states exactly those (generated from the registry: a new method's env
is checked when it is registered)."""

from __future__ import annotations

import importlib
import inspect

import pytest

from pf_envs.registry import EXTRA_IDS, METHODS


def _class(entry_point: str):
    module, name = entry_point.split(":")
    return getattr(importlib.import_module(module), name)


def _table(cls) -> dict:
    table = getattr(cls, "SETTINGS", None)
    if table is None:  # envs that keep their table at module level (Toy)
        table = importlib.import_module(cls.__module__).SETTINGS
    return table


@pytest.mark.parametrize("entry_point", sorted({*METHODS.values(), *EXTRA_IDS.values()}))
def test_every_signature_default_is_the_settings_table_default(entry_point):
    cls = _class(entry_point)
    table = _table(cls)
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
              if k != "self" and p.kind is not p.VAR_KEYWORD}
    valid = set(cls.valid_kwargs()) if hasattr(cls, "valid_kwargs") else set(table)
    assert set(params) == valid, f"{cls.__name__}: signature {sorted(set(params) ^ valid)} vs the table"
    wrong = {k: (p.default, table[k].default) for k, p in params.items() if p.default != table[k].default
             or type(p.default) is not type(table[k].default)}
    assert not wrong, f"{cls.__name__}: (signature, table) defaults differ: {wrong}"


def test_the_shared_keywords_are_one_table():
    """The model envs take the common keywords from one table; only a method's own meaning
    of one (quantization does no fine-tuning by default) differs."""
    from pf_envs.model_env import COMMON_SETTINGS

    for entry_point in METHODS.values():
        table = _table(_class(entry_point))
        differ = {k for k in COMMON_SETTINGS if k in table and table[k] != COMMON_SETTINGS[k]}
        assert differ <= {"ft_iters", "ft_batch_size", "ft_lr", "bn_batches", "bn_batch_size", "bn_augment"}, (
            entry_point, differ)
