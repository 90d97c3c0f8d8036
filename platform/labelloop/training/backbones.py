"""timm backbone names, checked where a recipe is made.

Kept out of `training.recipe`, which loads without torch or timm: only the kinds whose
networks come from timm (classification, detection) import this.
"""

from __future__ import annotations


def timm_encoder(name: str) -> str:
    """`name` when timm can build it, else a ValueError naming similar models: checked when
    a recipe is made (a trigger answers 422), not when training builds the network later."""
    import timm  # deferred: importing timm costs a second

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise ValueError(f"{name!r} is not a timm model{hint}")
    return name
