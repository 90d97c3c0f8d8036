"""The Label Studio client and task push against a real server: tasks, uploads,
predictions, re-push, errors."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import numpy as np
import pytest
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from labelloop.errors import ExternalServiceError
from labelloop.imaging import encode_png
from labelloop.labelstudio.client import LabelStudioClient
from labelloop.labelstudio.push import KEY_FIELD, PushTask, push_tasks
from tests.integration.labelstudio_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.labelstudio]

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="RBC"/><Label value="WBC"/></BrushLabels>
  <RectangleLabels name="box" toName="image">
    <Label value="RBC"/><Label value="WBC"/>
  </RectangleLabels>
</View>"""
H, W = 24, 32


def _mask(i: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[2 + i : 10 + i, 3 + 2 * i : 15 + 2 * i] = 255
    return m


def _image(i: int) -> bytes:
    rng = np.random.default_rng(i)
    return encode_png(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))


def _result(i: int) -> list[dict]:
    size = {"original_width": W, "original_height": H, "image_rotation": 0}
    return [
        {
            "id": f"b{i}",
            "from_name": "box",
            "to_name": "image",
            "type": "rectanglelabels",
            **size,
            "value": {
                "x": 10.0 + i,
                "y": 12.5,
                "width": 25.0,
                "height": 30.0,
                "rotation": 0,
                "rectanglelabels": ["WBC"],
            },
        },
        {
            "id": f"m{i}",
            "from_name": "mask",
            "to_name": "image",
            "type": "brushlabels",
            **size,
            "value": {"format": "rle", "rle": mask2rle(_mask(i)), "brushlabels": ["RBC"]},
        },
    ]


def _tasks(round_no: int, version: str, score_shift: float = 0.0) -> list[PushTask]:
    tasks = []
    for i in range(3):
        png = _image(i)
        tasks.append(
            PushTask(
                key=hashlib.sha256(png).hexdigest(),
                filename=f"cell_{i}.png",
                image_bytes=png,
                data_extra={"labelloop_round": round_no, "uncertainty": 0.5 + i / 10, "rank": i},
                prediction={
                    "result": _result(i),
                    "score": 0.2 + i / 10 + score_shift,
                    "model_version": version,
                },
            )
        )
    return tasks


@pytest.fixture
def ls(labelstudio) -> LabelStudioClient:
    return LabelStudioClient(labelstudio.url, labelstudio.token)


@pytest.fixture
def client(labelstudio) -> LabelStudio:
    return LabelStudio(base_url=labelstudio.url, api_key=labelstudio.token)


def _by_key(ls: LabelStudioClient, project: int) -> dict[str, dict]:
    return {t["data"][KEY_FIELD]: t for t in ls.tasks(project)}


def test_push_uploads_images_attaches_predictions_and_reuses_tasks(labelstudio, ls, client):
    title = f"client {uuid.uuid4().hex[:8]}"
    project = ls.ensure_project(title, CONFIG)
    assert ls.ensure_project(title, CONFIG) == project

    first = _tasks(1, "round-1")
    ids = push_tasks(ls, project, first)
    assert set(ids) == {t.key for t in first}
    assert len(set(ids.values())) == 3

    rows = _by_key(ls, project)
    assert set(rows) == set(ids)
    for i, t in enumerate(first):
        row = rows[t.key]
        assert row["id"] == ids[t.key]
        assert row["data"]["labelloop_round"] == 1
        assert row["data"]["uncertainty"] == pytest.approx(0.5 + i / 10)
        assert row["data"]["rank"] == i
        image_url = row["data"]["image"]
        assert image_url.startswith("/data/upload/"), image_url
        assert image_url.endswith(f"cell_{i}.png")

        preds = ls.predictions(ids[t.key])
        assert len(preds) == 1
        (pred,) = preds
        assert pred["model_version"] == "round-1"
        assert pred["score"] == pytest.approx(0.2 + i / 10)
        assert [r["type"] for r in pred["result"]] == ["rectanglelabels", "brushlabels"]
        assert pred["result"][0]["value"]["x"] == pytest.approx(10.0 + i)
        rle = pred["result"][1]["value"]["rle"]
        decoded = decode_rle(rle).reshape(H, W, 4)[:, :, 3]
        np.testing.assert_array_equal(decoded > 0, _mask(i) > 0)

        auth = {"Authorization": f"Token {labelstudio.token}"}
        got = httpx.get(labelstudio.url + image_url, headers=auth, timeout=30)
        assert got.status_code == 200
        assert got.content == t.image_bytes
        anonymous = httpx.get(labelstudio.url + image_url, timeout=30)
        assert anonymous.status_code != 200 or anonymous.content != t.image_bytes

    assert client.projects.get(project).model_version == "round-1"

    # The same round again with new scores: same tasks, the prediction is replaced.
    again = _tasks(2, "round-1", score_shift=0.05)
    assert push_tasks(ls, project, again) == ids
    rows = _by_key(ls, project)
    assert len(rows) == 3
    for i, t in enumerate(again):
        assert rows[t.key]["data"]["labelloop_round"] == 2
        assert rows[t.key]["data"]["image"].endswith(f"cell_{i}.png")
        preds = ls.predictions(ids[t.key])
        assert [(p["model_version"], round(p["score"], 4)) for p in preds] == [
            ("round-1", round(0.25 + i / 10, 4))
        ]

    # A new model version adds its prediction beside the earlier one.
    assert push_tasks(ls, project, _tasks(3, "round-3")) == ids
    assert len(ls.tasks(project)) == 3
    for key, task_id in ids.items():
        versions = sorted(p["model_version"] for p in ls.predictions(task_id))
        assert versions == ["round-1", "round-3"], key
    assert client.projects.get(project).model_version == "round-3"
    uploads = client.files.list(project, all_=True)
    assert len(uploads) == 3  # re-pushes upload nothing


def test_push_with_local_file_urls_uploads_nothing(labelstudio, ls, client):
    folder = labelstudio.document_root / f"pool-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    tasks = [
        PushTask(key=f"local-{i}", filename=f"img_{i}.png", image_bytes=_image(10 + i))
        for i in range(2)
    ]
    for t in tasks:
        (folder / t.filename).write_bytes(t.image_bytes)
    project = ls.ensure_project(f"local {folder.name}", CONFIG)
    client.import_storage.local.create(project=project, path=str(folder), use_blob_urls=True)
    names = {t.key: t.filename for t in tasks}

    ids = push_tasks(
        ls,
        project,
        tasks,
        image_url_for=lambda key: f"/data/local-files/?d={folder.name}/{names[key]}",
    )
    assert push_tasks(ls, project, tasks, image_url_for=lambda key: "unused") == ids

    rows = _by_key(ls, project)
    assert set(rows) == {"local-0", "local-1"}
    auth = {"Authorization": f"Token {labelstudio.token}"}
    for t in tasks:
        url = rows[t.key]["data"]["image"]
        assert url == f"/data/local-files/?d={folder.name}/{t.filename}"
        got = httpx.get(labelstudio.url + url, headers=auth, timeout=30)
        assert got.status_code == 200
        assert got.content == t.image_bytes
        assert ls.predictions(ids[t.key]) == []
    assert client.files.list(project, all_=True) == []


def test_http_failures_become_external_service_errors(labelstudio, ls):
    bad = LabelStudioClient(labelstudio.url, "0" * 40)
    with pytest.raises(ExternalServiceError) as err:
        bad.ensure_project("never", CONFIG)
    assert "HTTP 401" in str(err.value)
    assert labelstudio.url in str(err.value)

    with pytest.raises(ExternalServiceError) as err:
        ls.ensure_project(f"broken {uuid.uuid4().hex[:8]}", "<View><Image name=")
    assert "HTTP 400" in str(err.value)
    assert labelstudio.token not in str(err.value)

    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ExternalServiceError) as err:
        LabelStudioClient(closed, labelstudio.token, timeout=5).tasks(1)
    assert "unreachable" in str(err.value)
    assert closed in str(err.value)
