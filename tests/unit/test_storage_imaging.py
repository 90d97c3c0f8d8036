from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from labelloop.errors import InputError
from labelloop.imaging import decode_image, encode_png
from labelloop.storage import BlobStore, sha256_bytes


def test_blob_put_is_content_addressed_and_idempotent(tmp_path):
    store = BlobStore(tmp_path)
    key1, sha = store.put_bytes(b"hello", prefix="images", suffix=".png")
    key2, _ = store.put_bytes(b"hello", prefix="images", suffix=".png")
    assert key1 == key2 == f"images/{sha[:2]}/{sha}.png"
    assert sha == sha256_bytes(b"hello")
    assert store.get_bytes(key1) == b"hello"
    assert len(list(tmp_path.rglob("*.png"))) == 1
    assert not list(tmp_path.rglob("*.tmp"))


def test_blob_keys_cannot_escape_the_root(tmp_path):
    store = BlobStore(tmp_path / "root")
    with pytest.raises(ValueError, match="invalid blob key"):
        store.get_bytes("../outside")
    with pytest.raises(ValueError):
        store.get_bytes("/etc/passwd")


def test_blob_store_accepts_fsspec_urls():
    store = BlobStore("memory://labelloop-test")
    key, _ = store.put_bytes(b"abc", prefix="x")
    assert store.get_bytes(key) == b"abc"
    assert store.local_path(key) is None


def test_decode_round_trip():
    arr = np.random.default_rng(0).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    assert (decode_image(encode_png(arr)) == arr).all()


def test_truncated_image_names_the_file():
    data = encode_png(np.zeros((64, 64, 3), np.uint8))[:40]
    with pytest.raises(InputError, match=r"file broken\.png: cannot decode image"):
        decode_image(data, name="broken.png")


def test_empty_and_garbage_images_are_refused():
    with pytest.raises(InputError, match="empty"):
        decode_image(b"", name="e.png")
    with pytest.raises(InputError, match="cannot decode"):
        decode_image(b"not an image at all", name="g.png")


def test_pixel_limit_refuses_large_images_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (4000, 3000)).save(buf, format="PNG")
    with pytest.raises(InputError, match="over the limit of 1000000"):
        decode_image(buf.getvalue(), name="big.png", max_pixels=1_000_000)
