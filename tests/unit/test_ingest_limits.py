"""Limits that must hold as documented: the pixel setting is the one limit, and a zip
bomb spread over many members is refused before anything is written."""

from __future__ import annotations

import json
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from labelloop.context import Context
from labelloop.db import migrate
from labelloop.errors import InputError
from labelloop.ingest import ingest_path
from labelloop.ingest.archive import safe_extract
from tests.unit.ingest_fixtures import NOTHING, make_project, row_counts


@pytest.fixture
def pillow_ceiling(monkeypatch):
    """Pillow's own limit, scaled down so a small image stands for a 92 MP slide."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)


def _ctx(settings_factory, max_pixels: int) -> Context:
    settings = settings_factory(max_image_pixels=max_pixels)
    migrate.upgrade(settings.database_url)
    return Context(settings)


def _slide(tmp_path, side: int = 60):
    folder = tmp_path / "slides"
    folder.mkdir()
    Image.new("RGB", (side, side), (200, 100, 120)).save(folder / "slide.png")
    return folder


def test_the_pixel_setting_lifts_pillows_own_ceiling(settings_factory, tmp_path, pillow_ceiling):
    # 3,600 pixels: over Pillow's (scaled) ceiling, at twice it even, but within the setting
    ctx = _ctx(settings_factory, max_pixels=5000)
    make_project(ctx, "slides", "segmentation", ["tumour"])
    report = ingest_path(ctx, "slides", _slide(tmp_path), fmt="images")
    assert report.images_new == 1
    ctx.close()


def test_the_pixel_setting_still_refuses_larger_images(settings_factory, tmp_path):
    ctx = _ctx(settings_factory, max_pixels=3000)
    make_project(ctx, "slides", "segmentation", ["tumour"])
    with pytest.raises(InputError, match="60x60 = 3600 pixels, over the limit of 3000"):
        ingest_path(ctx, "slides", _slide(tmp_path), fmt="images")
    assert row_counts(ctx) == NOTHING
    ctx.close()


def test_a_bomb_spread_over_members_under_the_per_member_size_is_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    zeros = bytes(7 * 2**20)  # each member under the per-member threshold
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(12):
            zf.writestr(f"export/part{i:02d}.json", zeros)
    with pytest.raises(InputError, match=r"archive expands \d+x to 84 MiB over 12 members"):
        safe_extract(bomb, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*.json"))


def _image_blobs(ctx) -> list:
    root = ctx.blobs.local_path("images")
    return sorted(p for p in root.rglob("*") if p.is_file()) if root and root.exists() else []


def test_a_failed_ingest_leaves_no_image_blobs(ctx, tmp_path):
    from tests.factories import png, rect, task, write_export

    images = {f"images/{i}.png": png(seed=i) for i in range(3)}
    tasks = [task(i, f"images/{i}.png", [[rect("RBC", 1, 1, 5, 5)]]) for i in range(2)]
    tasks.append(task(2, "images/2.png", [[rect("Tumour", 1, 1, 5, 5)]]))  # not a label
    export = write_export(tmp_path, tasks, images)
    make_project(ctx, "cells", "detection", ["RBC"])
    with pytest.raises(InputError, match="Tumour"):
        ingest_path(ctx, "cells", export)
    assert row_counts(ctx) == NOTHING and _image_blobs(ctx) == []
    report = ingest_path(ctx, "cells", export, skip_invalid=True)
    assert report.images_new == 2 and len(report.skipped) == 1
    assert len(_image_blobs(ctx)) == 2  # the skipped record's image went with it


def _nesting(text: str) -> int:
    """The deepest array / object nesting of JSON text, read one character at a time."""
    depth = deepest = 0
    inside = escaped = False
    for ch in text:
        if inside:
            escaped, inside = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            inside = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


@pytest.mark.parametrize("fmt", ["labelstudio", "coco", "auto"])
def test_json_nested_beyond_any_export_is_refused_before_it_is_parsed(ctx, tmp_path, fmt):
    """100,000 brackets (200 KB) took ijson over 24 GB, and the process was killed; format
    detection parsed the file too, so it checks first as well."""
    path = tmp_path / ("instances.json" if fmt == "coco" else "export.json")
    body = "[" * 100_000 + "]" * 100_000
    path.write_text('{"images": ' + body + "}" if fmt == "coco" else body)
    project = make_project(ctx, "cells", "detection", ["RBC"])
    with pytest.raises(InputError, match=r"nested deeper than 256 levels") as err:
        ingest_path(ctx, project, tmp_path if fmt == "auto" else path, fmt=fmt)
    assert err.value.file == str(path)
    assert row_counts(ctx) == NOTHING


json_values = st.recursive(
    st.none() | st.integers() | st.text(alphabet='ab[]{}"\\\n', max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet='k"\\[{', max_size=3), inner, max_size=3)
    ),
    max_leaves=30,
)


def test_unbalanced_json_is_left_to_the_parser_not_called_too_deep(tmp_path):
    from labelloop.ingest.streaming import check_nesting

    for text in ('{"a": 1}}', "[1]]", '["x"]]]'):
        path = tmp_path / "broken.json"
        path.write_text(text)
        check_nesting(path, file="broken.json")  # the parser's error names what is wrong


@given(value=json_values, chunk=st.sampled_from([1, 2, 3, 5, 64]))
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_the_nesting_check_counts_as_a_parser_does(tmp_path, monkeypatch, value, chunk):
    """Brackets inside strings, escaped quotes and backslash runs split across reads do
    not count; the check passes at the true depth and refuses one below it."""
    from labelloop.ingest import streaming

    monkeypatch.setattr(streaming, "_SCAN_CHUNK", chunk)
    streaming._CHECKED.clear()  # each example rewrites one file, maybe within one mtime tick
    text = json.dumps(value)
    path = tmp_path / "v.json"
    path.write_text(text)
    depth = _nesting(text)
    streaming.check_nesting(path, file="v.json", limit=depth)
    if depth:
        with pytest.raises(InputError, match=f"nested deeper than {depth - 1} levels"):
            streaming.check_nesting(path, file="v.json", limit=depth - 1)
