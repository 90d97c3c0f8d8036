"""The `file` push target: a self-contained round folder that annotators import by hand.

    round-NNN/images/<sha256[:16]>.<ext>   the round's images
    round-NNN/tasks.csv                    image, id, rank, uncertainty, predicted counts
    + each tool's import files, e.g. tasks.json + label_config.xml (Label Studio) and
      cvat/annotations.xml + cvat/images.txt (CVAT 1.1)

Each tool contributes its import files through a function named in `TOOL_FILES`
(`RoundBatch -> {relative path: text}`), imported on first use, so this package never
imports a tool package. Every file's text is made before anything is written, so a round
that cannot be converted leaves no folder behind.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from labelloop.context import Context
from labelloop.push.stage import PushOptions, PushResult, RoundBatch, record_push, round_batch
from labelloop.push.targets import load_function

TOOL_FILES = (
    "labelloop.labelstudio.push:round_files",
    "labelloop.cvat.push:round_files",
)


def push_to_file(ctx: Context, round_id: int, options: PushOptions) -> PushResult:
    batch = round_batch(ctx, round_id)
    folder, id_map = write_round_folder(ctx, batch, options.out_dir)
    push_id = record_push(ctx, round_id, "file", str(folder), id_map)
    return PushResult(push_id, "file", str(folder), batch.number, batch.model_version, id_map)


def write_round_folder(
    ctx: Context, batch: RoundBatch, out_dir: str | Path | None = None
) -> tuple[Path, dict[int, str]]:
    """Write the round's folder; returns it and the image id -> `images/<file>` map."""
    files: dict[str, str] = {}
    for path in TOOL_FILES:
        files.update(load_function(path)(batch))
    files["tasks.csv"] = _csv(batch)
    out = Path(out_dir) if out_dir else ctx.settings.data_dir / "exports" / batch.project
    folder = out / f"round-{batch.number:03d}"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    id_map = {}
    for spec in batch.specs:
        (folder / "images" / spec.file_name).write_bytes(ctx.blobs.get_bytes(spec.blob_key))
        id_map[spec.image_id] = f"images/{spec.file_name}"
    for rel, text in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8", newline="")
        tmp.replace(target)
    return folder, id_map


def _csv(batch: RoundBatch) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    labels = batch.labels
    w.writerow(["image", "image_id", "rank", "uncertainty", *[f"count_{lb}" for lb in labels]])
    for spec in batch.specs:
        w.writerow(
            [
                f"images/{spec.file_name}",
                spec.image_id,
                spec.rank,
                spec.uncertainty,
                *[spec.counts.get(lb, "") for lb in labels],
            ]
        )
    return buf.getvalue()
