"""Where training runs: the device plan ($LABELLOOP_TRAIN_DEVICES), bf16 where native, and
one run spread over several processes with DDP (on CPU processes here, GPUs in production)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelloop.errors import ConfigError
from labelloop.training import harness
from labelloop.training.classification.recipe import ClassificationRecipe
from labelloop.training.harness import DevicePlan, device_plan, trainer_precision
from labelloop.training.kind import get_kind
from tests.unit.test_classification_train import FAST, LABELS, _manifest, _scene, _splits


def test_device_plan_reads_the_setting_and_refuses_nonsense(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(harness.DEVICES_ENV, raising=False)
    assert device_plan() == DevicePlan("cpu", 1, "auto")
    assert device_plan("all") == DevicePlan("cpu", 1, "auto")  # no GPU: the CPU
    assert device_plan("cpu:2") == DevicePlan("cpu", 2, "ddp_fork")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert device_plan() == DevicePlan("cuda", 1, "auto")
    assert device_plan("all") == DevicePlan("cuda", 4, "ddp_fork")
    assert device_plan("8") == DevicePlan("cuda", 4, "ddp_fork")
    assert device_plan("cpu") == DevicePlan("cpu", 1, "auto")
    monkeypatch.setenv(harness.DEVICES_ENV, "2")
    assert device_plan() == DevicePlan("cuda", 2, "ddp_fork")
    for bad in ("0", "two", "cpu:0", "cpu:all", "cpux", "-1"):
        with pytest.raises(ConfigError, match="LABELLOOP_TRAIN_DEVICES"):
            device_plan(bad)


def test_auto_precision_is_bf16_on_gpus_and_float32_on_plain_cpus(monkeypatch):
    assert ClassificationRecipe().precision == "auto"
    monkeypatch.setattr(harness, "native_bf16", lambda device: device == "cuda")
    assert trainer_precision("auto", DevicePlan("cuda", 1, "auto")) == "bf16-mixed"
    assert trainer_precision("auto", DevicePlan("cpu", 1, "auto")) == "32-true"
    assert trainer_precision("32", DevicePlan("cuda", 1, "auto")) == "32-true"
    # Several GPUs: asked in a child process, so this one never touches CUDA before forking.
    monkeypatch.setattr(harness, "_cuda_bf16_in_child", lambda: True)
    assert trainer_precision("auto", DevicePlan("cuda", 2, "ddp_fork")) == "bf16-mixed"


def test_one_run_spans_two_processes_with_ddp(monkeypatch, tmp_path):
    monkeypatch.setenv(harness.DEVICES_ENV, "cpu:2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rng = np.random.default_rng(1)
    scenes = [_scene(rng) for _ in range(20)]
    manifest, blobs = _manifest([(img, b, _splits(i)) for i, (img, b) in enumerate(scenes)])
    recipe = ClassificationRecipe(source="crops", epochs=3, **FAST)
    kind = get_kind("classification")
    outcome = kind.train(manifest, recipe, blobs.__getitem__, tmp_path)
    # The forked workers trained; this process got their checkpoints and weights back.
    assert (outcome.epochs_completed, outcome.epochs_run) == (3, 3)
    assert outcome.best_epoch is not None and 1 <= outcome.best_epoch <= 3
    model = kind.load(outcome.weights_path, recipe, LABELS)
    test = kind.evaluate(
        model, manifest, blobs.__getitem__, split="test", labels=LABELS, recipe=recipe
    )
    assert test["accuracy"] > 0.9


def test_a_forked_training_worker_opens_its_own_database_connections(tmp_path):
    import os

    from sqlalchemy import text

    from labelloop.db.session import Database

    db = Database(f"sqlite:///{tmp_path / 'fork.db'}")
    with db.session() as s:
        s.execute(text("select 1"))
    pool = db.engine.pool
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        fresh = db.engine.pool is not pool
        with db.session() as s:
            s.execute(text("select 1"))
        os._exit(0 if fresh else 3)
    assert os.waitpid(pid, 0)[1] >> 8 == 0
    assert db.engine.pool is pool  # the parent keeps its connections
