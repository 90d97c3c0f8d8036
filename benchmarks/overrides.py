"""`--set field=value` recipe overrides, shared by the benchmarks that train a recipe, so
that a change tried on BCCD is tried the same way on a second dataset."""

from __future__ import annotations

import argparse
from typing import Any

import yaml


def add_set_argument(ap: argparse.ArgumentParser, extra_help: str = "") -> None:
    """`--set FIELD=VALUE`, repeatable."""
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="labelloop recipe override (YAML value; augment.scale=0.3 nests)" + extra_help,
    )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["augment.scale=0.3", "weight_decay=0.05"]` as nested recipe fields; a pair without
    `=` is refused rather than read as an empty value."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out
