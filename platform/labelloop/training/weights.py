"""Pre-trained backbone weights from a local file, for machines that cannot reach a hub.

A recipe's `encoder_weights` is either a hub name ("imagenet", a timm tag) that the
libraries download, or the path of a state dict saved on this machine (a timm, smp or
torchvision model's `state_dict()`, or a whole network's that contains the backbone).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from labelloop.errors import ConfigError, InputError
from labelloop.training.common import load_state_dict

WEIGHT_SUFFIXES = frozenset({".pth", ".pt", ".bin", ".ckpt"})
# Prefixes under which whole networks keep their backbone (DDP, smp, timm wrappers, ours).
_PREFIXES = ("module.", "network.", "model.", "encoder.", "backbone.")
# Below this fraction of the backbone's tensors found, the file is for another network.
MIN_MATCHED = 0.5


def weights_file(value: str | None) -> Path | None:
    """The local file `value` names; None for a hub name or no weights. A value that looks
    like a path (a weights suffix or a folder separator) must exist."""
    if not value:
        return None
    path = Path(value).expanduser()
    if path.suffix.lower() not in WEIGHT_SUFFIXES and "/" not in value:
        return None
    if not path.is_file():
        raise ConfigError(f"encoder_weights file not found: {path}")
    return path


def _stripped(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def load_backbone_file(module: nn.Module, path: Path) -> int:
    """Copy into `module` every tensor of the file whose name (wrapper prefixes ignored)
    and shape match; the rest (a classifier head, another decoder) is left out. Returns
    how many tensors were copied; ConfigError when under half of the module's were found."""
    try:
        saved = load_state_dict(path)
    except InputError as exc:
        raise ConfigError(f"encoder_weights {path}: {exc.reason}") from exc
    by_name = {_stripped(k): v for k, v in saved.items()}
    target = module.state_dict()
    wanted = [k for k in target if not k.endswith("num_batches_tracked")]
    found = {}
    for key in wanted:
        value = by_name.get(_stripped(key))
        if value is not None and value.shape == target[key].shape:
            found[key] = value
    if len(found) < MIN_MATCHED * len(wanted):
        example = ", ".join(list(by_name)[:3])
        raise ConfigError(
            f"encoder_weights {path} matches {len(found)} of the backbone's {len(wanted)} "
            f"tensors (its names start {example}...): weights for another network?"
        )
    module.load_state_dict(found, strict=False)
    return len(found)
