"""`--set field=value` recipe overrides, shared by the benchmarks that train a recipe, so
that a change tried on BCCD is tried the same way on a second dataset."""

from __future__ import annotations

import argparse
from typing import Any

import yaml


def field_value(text: str) -> str:
    """A `--set` value as typed, refused (argparse's usage error, exit 2) without `=`."""
    key, sep, _ = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=VALUE")
    return text


def add_set_argument(ap: argparse.ArgumentParser, extra_help: str = "") -> None:
    """`--set FIELD=VALUE`, repeatable."""
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        type=field_value,
        metavar="FIELD=VALUE",
        help="labelloop recipe override (YAML value; augment.scale=0.3 nests)" + extra_help,
    )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["augment.scale=0.3", "weight_decay=0.05"]` (as `--set` let them through) as
    nested recipe fields."""
    out: dict[str, Any] = {}
    for pair in map(field_value, pairs):
        key, _, value = pair.partition("=")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out
