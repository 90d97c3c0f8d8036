"""What the per-format ingest tests share: row counts, projects and a reader fuzz check."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from sqlalchemy import func, select

from labelloop.db.models import Annotation, Image, SourceItem
from labelloop.errors import InputError
from labelloop.ingest.formats import formats
from labelloop.ingest.records import ReadOptions
from labelloop.projects import create_project

NOTHING = {"Image": 0, "SourceItem": 0, "Annotation": 0}


def row_counts(ctx) -> dict[str, int]:
    with ctx.db.session() as s:
        return {
            m.__name__: s.scalar(select(func.count()).select_from(m))
            for m in (Image, SourceItem, Annotation)
        }


def make_project(ctx, name: str, task: str, labels: list[str]) -> str:
    with ctx.db.session() as s:
        create_project(s, name, task, labels)
    return name


def item_meta(ctx) -> dict[str, dict]:
    with ctx.db.session() as s:
        return {i.external_id: dict(i.meta) for i in s.scalars(select(SourceItem))}


def active_shapes(ctx) -> list[dict]:
    with ctx.db.session() as s:
        rows = s.scalars(select(Annotation).where(Annotation.state == "active")).all()
        return [shape for a in rows for shape in a.shapes]


def read_all(fmt: str, path: Path, **opts) -> list:
    """Run a reader to the end the way ingest does (records, then their image bytes);
    anything but InputError escaping is a bug the fuzz tests look for."""
    records = []
    try:
        for rec in formats()[fmt].read(path, ReadOptions(**opts)):
            assert rec.error is None or isinstance(rec.error, InputError)
            if rec.error is None:
                with contextlib.suppress(InputError):
                    rec.load()
            records.append(rec)
    except InputError:
        pass
    return records


# Tokens that break parsers in interesting ways when swapped into a valid file.
_TOKENS = [
    b"",
    b"-1",
    b"0",
    b"nan",
    b"1e999",
    b"-1e999",
    b"99999999999999999999999999",
    b"abc",
    b"<",
    b"&amp;",
    b"\xff\xfe",
    b'"',
    b"null",
    b"[]",
    b"{}",
    b"[[1, 2]]",
    b"true",
    b"\n",
    b" 0.5",
]


_WORD = re.compile(rb"[A-Za-z0-9_.+\-]+")
# A value rather than a name: XML text, a JSON number or string, a token of a text line.
_VALUE = re.compile(rb'(?<=[>\s,\[:])[A-Za-z0-9_.+\-]+|(?<=: )"[^"\n]*"|(?<=:)"[^"\n]*"')


def mutated(valid: bytes):
    """A hypothesis strategy: `valid` with a few edits. Most swap a value (a coordinate,
    a size, a class) for a troublesome token, so the file still parses and its content is
    wrong; the others swap any word, flip or cut bytes, or truncate the file."""
    from hypothesis import strategies as st

    values = [m.span() for m in _VALUE.finditer(valid)] or [(0, 0)]
    words = [m.span() for m in _WORD.finditer(valid)] or [(0, 0)]
    edit = st.one_of(
        st.tuples(st.just("value"), st.sampled_from(values), st.sampled_from(_TOKENS)),
        st.tuples(st.just("value"), st.sampled_from(values), st.sampled_from(_TOKENS)),
        st.tuples(st.just("word"), st.sampled_from(words), st.sampled_from(_TOKENS)),
        st.tuples(
            st.sampled_from(["flip", "cut", "truncate"]),
            st.tuples(st.integers(0, max(len(valid) - 1, 0)), st.integers(1, 12)),
            st.just(b""),
        ),
    )

    def apply(edits: list[tuple[str, tuple[int, int], bytes]]) -> bytes:
        # Spans refer to `valid`, so edits are applied from the end backwards.
        out = bytearray(valid)
        for op, (a, b), token in sorted(edits, key=lambda e: -e[1][0]):
            if op in ("value", "word"):
                out[a:b] = token
            elif op == "flip" and a < len(out):
                out[a] ^= 0x5A
            elif op == "cut":
                del out[a : a + b]
            elif op == "truncate":
                del out[a:]
        return bytes(out)

    return st.lists(edit, min_size=1, max_size=4).map(apply)
