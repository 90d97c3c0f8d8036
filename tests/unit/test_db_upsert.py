"""get_or_insert: one INSERT per new row, no flush of pending rows, no SELECT back."""

from __future__ import annotations

from sqlalchemy import event, func, select

from labelloop.db.models import Image
from labelloop.db.upsert import get_or_insert, get_or_insert_many


def _values(sha: str) -> dict:
    return {
        "sha256": sha,
        "blob_key": f"images/{sha}.png",
        "width": 4,
        "height": 3,
        "format": "png",
    }


def test_inserts_once_and_finds_the_row_again(ctx):
    with ctx.db.session() as s:
        statements: list[str] = []
        event.listen(s.get_bind(), "before_cursor_execute", lambda *a: statements.append(a[2]))
        row, created = get_or_insert(s, Image, _values("a" * 64), ["sha256"])
        assert created and row.width == 4
        assert [q.split()[0] for q in statements if q != "BEGIN"] == ["INSERT"]  # alone
        again, created = get_or_insert(s, Image, _values("a" * 64), ["sha256"])
        assert not created and again is row
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 1


def test_a_row_of_a_rolled_back_savepoint_does_not_block_its_reused_id(ctx):
    """SQLite gives the next row the id a rolled-back one had; the stale object, still
    referenced (here: `gone`), must not make the new row's object clash with it."""
    with ctx.db.session() as s:
        sp = s.begin_nested()
        gone, _ = get_or_insert(s, Image, _values("b" * 64), ["sha256"])
        sp.rollback()
        row, created = get_or_insert(s, Image, _values("c" * 64), ["sha256"])
        assert created and row.id == gone.id and row.sha256 == "c" * 64
    with ctx.db.session() as s:
        assert s.scalars(select(Image.sha256)).all() == ["c" * 64]


def test_many_rows_in_one_insert_and_the_existing_ones_found(ctx):
    with ctx.db.session() as s:
        there, _ = get_or_insert(s, Image, _values("d" * 64), ["sha256"])
        statements: list[str] = []
        event.listen(s.get_bind(), "before_cursor_execute", lambda *a: statements.append(a[2]))
        rows = get_or_insert_many(s, Image, [_values(c * 64) for c in "edf"], ["sha256"])
        assert [r.sha256 for r in rows] == ["e" * 64, "d" * 64, "f" * 64]
        assert rows[1] is there and rows[0].id and rows[2].id
        assert [q.split()[0] for q in statements if q != "BEGIN"] == ["INSERT", "SELECT"]
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 3
