"""The `cvat` push target: a round becomes a CVAT task with the model's pre-annotations
(cvat-sdk). `round_files` gives the same pre-annotations as a 'CVAT for images 1.1' file
for the `file` target.

The round folder is written first, exactly as `push --to file` writes it; the task is then
created from its images in rank order (`sorting_method: predefined`) and the folder's
'CVAT for images 1.1' file is imported onto it, so the server and the file a user could
upload by hand hold the same thing. The push's id map records `<task id>/<frame>` per
image. cvat-sdk is an optional dependency (`pip install 'labelloop[cvat]'`).
"""

from __future__ import annotations

from labelloop.context import Context
from labelloop.cvat.writer import CvatImage, cvat_xml
from labelloop.errors import ConfigError, ExternalServiceError
from labelloop.push.file import write_round_folder
from labelloop.push.stage import PushOptions, PushResult, RoundBatch, record_push, round_batch

ANNOTATIONS = "cvat/annotations.xml"
IMAGE_LIST = "cvat/images.txt"


def round_files(batch: RoundBatch) -> dict[str, str]:
    """`cvat/annotations.xml` ('CVAT for images 1.1', the predictions) and `cvat/images.txt`
    (the images in rank order): create a CVAT task from `images/` (sorted by the list),
    then upload the XML as CVAT 1.1."""
    images = [CvatImage(sp.file_name, sp.width, sp.height, list(sp.shapes)) for sp in batch.specs]
    title = f"labelloop {batch.project} round {batch.number}"
    return {
        ANNOTATIONS: cvat_xml(images, batch.labels, title),
        IMAGE_LIST: "".join(f"{im.name}\n" for im in images),
    }


def _client(url: str, token: str, user: str, password: str):
    try:
        from cvat_sdk import make_client
    except ImportError:
        raise ConfigError(
            "pushing to a CVAT server needs cvat-sdk: pip install 'labelloop[cvat]' "
            "(or use --to file and upload cvat/annotations.xml by hand)"
        ) from None
    if token:
        return make_client(url, access_token=token)
    if user and password:
        return make_client(url, credentials=(user, password))
    raise ConfigError("CVAT push needs LABELLOOP_CVAT_TOKEN or LABELLOOP_CVAT_USER + _PASSWORD")


def push_to_cvat(ctx: Context, round_id: int, options: PushOptions) -> PushResult:
    st = ctx.settings
    url = options.url or st.cvat_url
    if not url:
        raise ConfigError("CVAT push needs LABELLOOP_CVAT_URL (or --ls-url for the CVAT server)")
    batch = round_batch(ctx, round_id)
    folder, id_map = write_round_folder(ctx, batch, options.out_dir)
    names = (folder / IMAGE_LIST).read_text().split()
    resources = [str(folder / "images" / n) for n in names]
    try:
        client = _client(
            url, st.cvat_token.get_secret_value(), st.cvat_user, st.cvat_password.get_secret_value()
        )
        from cvat_sdk import models

        with client:
            spec = models.TaskWriteRequest(
                name=f"labelloop {batch.project} round {batch.number}",
                labels=[models.PatchedLabelRequest(name=lb) for lb in batch.labels],
            )
            task = client.tasks.create_from_data(
                spec=spec,
                resources=resources,
                data_params={"sorting_method": "predefined", "image_quality": 95},
                annotation_path=str(folder / ANNOTATIONS),
                annotation_format="CVAT 1.1",
            )
            task_id = task.id
    except ConfigError:
        raise
    except Exception as exc:  # cvat-sdk raises its own HTTP / API error types
        raise ExternalServiceError(f"CVAT at {url}: {type(exc).__name__}: {exc}") from None
    frames = {name: i for i, name in enumerate(names)}
    cvat_map = {
        image_id: f"{task_id}/{frames[rel.split('/', 1)[1]]}" for image_id, rel in id_map.items()
    }
    destination = f"{url.rstrip('/')}/tasks/{task_id}"
    push_id = record_push(ctx, round_id, "cvat", destination, cvat_map)
    return PushResult(push_id, "cvat", destination, batch.number, batch.model_version, cvat_map)
