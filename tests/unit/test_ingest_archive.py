"""Zip exports: read like folders, and hostile archives refused before anything is written."""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from labelloop.db.models import Annotation, Image, SourceItem
from labelloop.errors import InputError
from labelloop.ingest import ingest_path
from labelloop.ingest.archive import safe_extract
from labelloop.projects import create_project
from tests.factories import small_export
from tests.support import require_shared_data


@pytest.fixture
def project(ctx):
    with ctx.db.session() as s:
        create_project(s, "z", "segmentation", ["RBC", "WBC", "Platelets"])
    return "z"


def _zip_folder(folder, target, prefix=""):
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + str(p.relative_to(folder)))
    return target


def _rows(ctx):
    with ctx.db.session() as s:
        return (
            s.scalar(select(func.count()).select_from(Image)),
            s.scalar(select(func.count()).select_from(Annotation)),
        )


def test_zipped_export_ingests_and_is_idempotent(ctx, project, tmp_path):
    src = tmp_path / "src"
    small_export(src, n=3)
    archive = _zip_folder(src, tmp_path / "project-7-at-2026.zip", prefix="export/")
    report = ingest_path(ctx, project, archive)
    assert (report.format, report.annotations_new) == ("labelstudio", 3)
    again = ingest_path(ctx, project, archive)
    assert again.annotations_new == 0 and _rows(ctx) == (3, 3)


def test_pool_zip_without_top_folder_keeps_stable_source(ctx, project, tmp_path):
    from tests.factories import png

    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):
        (pool / f"{i}.png").write_bytes(png(seed=i))
    archive = _zip_folder(pool, tmp_path / "pool.zip")
    assert ingest_path(ctx, project, archive).unlabeled == 3
    ingest_path(ctx, project, archive)
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(SourceItem)) == 3


@pytest.mark.parametrize(
    "member", ["../evil.json", "/etc/evil.json", "a/../../evil.json", "C:\\\\evil.json"]
)
def test_zip_slip_is_refused_and_nothing_written(ctx, project, tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("export.json", "[]")
        zf.writestr(member, "[]")
    with pytest.raises(InputError, match=r"bad\.zip.*(absolute path|escapes)"):
        ingest_path(ctx, project, archive)
    assert not (tmp_path / "evil.json").exists()
    assert _rows(ctx) == (0, 0)


def test_symlink_members_are_refused(tmp_path):
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("images/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(InputError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")


def test_zip_bomb_is_refused_before_extraction(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.json", b"0" * (60 * 2**20))
    with pytest.raises(InputError, match="zip bomb"):
        safe_extract(archive, tmp_path / "out")
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("a.bin", bytes(range(256)) * 8)
    with pytest.raises(InputError, match="over the limit of 1000"):
        safe_extract(plain, tmp_path / "out2", max_total_bytes=1000)
    assert not list((tmp_path / "out2").rglob("*.bin"))


def test_truncated_zip_is_a_clear_error(ctx, project, tmp_path):
    src = tmp_path / "src"
    small_export(src, n=2)
    archive = _zip_folder(src, tmp_path / "cut.zip")
    archive.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"cut\.zip"):
        ingest_path(ctx, project, archive)
    assert _rows(ctx) == (0, 0)


def _real_export(kind: str, folder: Path) -> Path:
    """A few files of a real dataset, laid out as the export the reader takes."""
    if kind == "folders":  # malaria crops: train/<class>/*.png
        real = require_shared_data("malaria-cells", "train")
        for cls in ("Parasitized", "Uninfected"):
            (folder / "train" / cls).mkdir(parents=True)
            for f in sorted((real / cls).glob("*.png"))[:2]:
                shutil.copy(f, folder / "train" / cls / f.name)
    else:  # ISBI 2012 test slices: an unlabeled pool
        folder.mkdir(parents=True)
        for f in sorted(require_shared_data("isbi2012-membrane", "test").glob("*.png"))[:3]:
            shutil.copy(f, folder / f.name)
    return folder


@pytest.mark.parametrize("kind", ["folders", "images"])
@pytest.mark.parametrize("prefix", ["malaria/", ""])
def test_folder_then_its_zip_adds_no_source_items(ctx, tmp_path, kind, prefix):
    """The source a reader names is the export's folder name, not where it lies: the
    zip (with the folder at its top, or flat and named after it) is the same source."""
    with ctx.db.session() as s:
        create_project(s, "m", "classification", ["Parasitized", "Uninfected"])
    folder = _real_export(kind, tmp_path / "malaria")
    first = ingest_path(ctx, "m", folder)
    archive = _zip_folder(folder, tmp_path / "zipped" / "malaria.zip", prefix=prefix)
    again = ingest_path(ctx, "m", archive)
    with ctx.db.session() as s:
        items = s.scalars(select(SourceItem)).all()
    assert (first.format, again.format) == (kind, kind)
    assert len(items) == first.records == again.records
    assert len({i.source for i in items}) == 1
    assert again.images_new == again.annotations_new == 0
    assert again.annotations_unchanged == first.annotations_new
