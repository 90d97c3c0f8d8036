"""Subset folders of one export (`train/ valid/ test/`, as Roboflow downloads are laid out).

An export split into such folders says which images the tool's user meant for testing;
readers pin those images to that split (`meta["split"]`), so every dataset version keeps
them there and test metrics compare like with like."""

from __future__ import annotations

from pathlib import Path

SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "valid": "val",
    "val": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def split_of(folder_name: str) -> str | None:
    """train / val / test for a subset folder's name (any case), else None."""
    return SPLIT_FOLDERS.get(folder_name.lower())


def split_folders(root: Path) -> list[Path]:
    """The subset folders directly below `root`, sorted."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and split_of(p.name))


def split_meta(folder_name: str) -> dict[str, str]:
    """`{"subset": name, "split": train|val|test}` for a subset folder, else `{}`."""
    split = split_of(folder_name)
    return {"subset": folder_name, "split": split} if split else {}
