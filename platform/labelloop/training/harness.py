"""The training harness every model kind shares: one training template, checkpoints,
resume, budget, progress.

`train` is the one way a run goes: seed, build the kind's DataModule and LightningModule,
`fit`, save the weights, evaluate on the val split. A kind fills it in with a
`TrainingPlan`. `fit` writes `last.ckpt` after every epoch and `best.ckpt` for the best
monitored validation metric into the work folder, continues from `last.ckpt` when a
redelivered task finds one, refuses a folder that belongs to another recipe or dataset,
and returns the best epoch's network weights.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import cv2
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, Timer
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from labelloop.errors import ConfigError, Interrupted
from labelloop.training.calibration import Calibration, calibrate
from labelloop.training.common import Fetch, ManifestDataModule, load_state_dict
from labelloop.training.recipe import BaseRecipe

Progress = Callable[[dict[str, Any]], None]
_log = logging.getLogger(__name__)

WARMUP_FRACTION = 0.1  # of the run, for the "onecycle" schedule
FINAL_LR_FACTOR = 0.02

LAST_CKPT = "last.ckpt"
BEST_NAME = "best"
WEIGHTS_FILE = "model.pt"
_META_KEY = "labelloop"
# Within long epochs, progress is also reported at most this often.
PROGRESS_EVERY_S = 15.0


@dataclass
class TrainOutcome:
    """What every kind's `train` returns."""

    weights_path: Path  # state_dict of the best epoch (last one when there is no val split)
    metrics: dict[str, Any]  # the kind's evaluation on the val split; {} without one
    epochs_run: int  # epochs trained by this call
    epochs_completed: int  # in total, including epochs restored from last.ckpt
    best_epoch: int | None  # 1-based epoch whose weights were saved
    last_epoch: int  # 1-based last completed epoch (== epochs_completed)
    duration_s: float
    resumed: bool
    stopped_by_time: bool
    recipe_hash: str
    history: list[dict[str, Any]] = field(default_factory=list)


def manifest_fingerprint(manifest: dict[str, Any]) -> str:
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class _ProgressReporter(Callback):
    """Reports {"epoch", "epochs", "step", "loss", ...} after every epoch (after validation,
    so val_dice is included) and, within long epochs, every PROGRESS_EVERY_S seconds."""

    def __init__(self, on_progress: Progress | None, epochs: int):
        self.on_progress = on_progress
        self.epochs = epochs
        self.start_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self._last_report = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_epoch = trainer.current_epoch

    def _emit(self, event: dict[str, Any]) -> None:
        self._last_report = time.monotonic()
        if self.on_progress is not None:
            self.on_progress(event)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not trainer.is_global_zero or time.monotonic() - self._last_report < PROGRESS_EVERY_S:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._emit(
            {
                "epoch": trainer.current_epoch + 1,
                "epochs": self.epochs,
                "step": trainer.global_step,
                "loss": float(loss) if loss is not None else None,
                "final": False,
            }
        )

    def epoch_saved(self, trainer: pl.Trainer, checkpoint: Path) -> None:
        """Called by `_LatestCheckpoint` once the epoch's `last.ckpt` is on disk (Lightning
        runs checkpoint callbacks after all others), so listeners may copy it elsewhere
        (runs.py mirrors it to the blob store) and a caller that cancels here keeps it.
        Under DDP only the first process reports."""
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        event: dict[str, Any] = {
            "epoch": trainer.current_epoch + 1,
            "epochs": self.epochs,
            "step": trainer.global_step,
            "loss": float(m["train_loss"]) if "train_loss" in m else None,
            "final": True,
            "checkpoint": str(checkpoint),
        }
        event.update({k: float(v) for k, v in m.items() if k.startswith("val_")})
        self.history.append(event)
        self._emit(event)


class _LatestCheckpoint(ModelCheckpoint):
    """`last.ckpt` after every epoch, then the epoch-end progress event."""

    def __init__(self, reporter: _ProgressReporter, **kwargs: Any):
        super().__init__(**kwargs)
        self.reporter = reporter

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self.reporter.epoch_saved(trainer, Path(filepath))


def _read_meta(path: Path) -> dict[str, Any] | None:
    """The stamp of an existing checkpoint; None (and the file set aside) when it cannot be
    read, e.g. the process died while writing it: the run then starts over."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to read means: nothing to resume from
        aside = path.with_suffix(".unreadable")
        os.replace(path, aside)
        _log.warning("cannot read checkpoint %s (%s); moved to %s, starting over", path, exc, aside)
        return None
    return {"epoch": int(ckpt.get("epoch", -1)), **ckpt.get(_META_KEY, {})}


class _StampCheckpoints(Callback):
    """Writes what the run is (recipe, dataset) into every checkpoint, so a workdir that
    belongs to another run is refused instead of silently resumed."""

    def __init__(self, meta: dict[str, Any]):
        self.meta = meta

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[_META_KEY] = dict(self.meta)


def compute_threads() -> int:
    """OMP_NUM_THREADS when set to a positive number, else the cores this process may use."""
    try:
        wanted = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        wanted = 0
    if wanted > 0:
        return wanted
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


@contextlib.contextmanager
def quiet_and_threaded() -> Iterator[None]:
    """Use the cores this process may run on (or OMP_NUM_THREADS where the operator set
    it, e.g. on a host shared with other jobs), keep OpenCV from oversubscribing them, and
    drop Lightning's start-up chatter; everything is restored afterwards."""
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(compute_threads())
    cv2.setNumThreads(1)
    noisy = [
        logging.getLogger(n)
        for n in (
            "pytorch_lightning.utilities.rank_zero",
            "pytorch_lightning.accelerators.cuda",
            "lightning.pytorch.utilities.rank_zero",
            "lightning_fabric.utilities.seed",
        )
    ]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
            # Expected: the workdir holds the checkpoints a resumed run continues from.
            warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
            # A run resumed on another host from the blob store: its best.ckpt stayed behind,
            # so the best epoch is tracked afresh from the resumed one (documented in fit).
            warnings.filterwarnings("ignore", message=r".*The dirpath has changed.*")
            warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)`.*")
            yield
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)


def network_state(ckpt_path: Path) -> tuple[dict[str, torch.Tensor], int]:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    prefix = "network."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return state, int(ckpt["epoch"]) + 1


@dataclass
class FitResult:
    state: dict[str, torch.Tensor]  # the network's weights at the best (or last) epoch
    best_epoch: int | None
    epochs_run: int
    epochs_completed: int
    resumed: bool
    stopped_by_time: bool
    history: list[dict[str, Any]]


def fit(
    system: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    recipe: BaseRecipe,
    manifest: dict[str, Any],
    workdir: Path,
    *,
    monitor: str,
    has_val: bool,
    on_progress: Progress | None = None,
    log_csv: bool = False,
) -> FitResult:
    """Train `system` (whose network lives in `system.network`) under the recipe's budget.

    `monitor` names a validation metric the system logs (higher is better); without a
    validation split the last epoch wins. Call inside `quiet_and_threaded()` after seeding.
    An exception raised by `on_progress` aborts the run (that is how a caller cancels);
    `last.ckpt` stays, so the run can be resumed.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    meta = {
        "recipe": recipe.model_dump(mode="json"),
        "resume_key": recipe.resume_key(),
        "manifest_sha256": manifest_fingerprint(manifest),
    }
    last = workdir / LAST_CKPT
    prior = _read_meta(last) if last.exists() else None
    resume = prior is not None
    stamp = (meta["resume_key"], meta["manifest_sha256"])
    if prior is not None and (prior.get("resume_key"), prior.get("manifest_sha256")) != stamp:
        raise ConfigError(
            f"{last} belongs to a different recipe or dataset; use a fresh workdir "
            "(only epochs, max_time_s and num_workers may change on resume)"
        )
    # Two callbacks: Lightning's save_last only writes when the monitored metric
    # improves, and resuming must continue from the latest epoch, not the best one.
    best = ModelCheckpoint(
        dirpath=workdir,
        filename=BEST_NAME,
        monitor=monitor,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    reporter = _ProgressReporter(on_progress, recipe.epochs)
    latest = _LatestCheckpoint(
        reporter,
        dirpath=workdir,
        filename=Path(LAST_CKPT).stem,
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
    )
    plan = device_plan()
    trainer = pl.Trainer(
        accelerator=plan.accelerator,
        devices=plan.devices,
        strategy=plan.strategy,
        precision=trainer_precision(recipe.precision, plan),
        max_epochs=recipe.epochs,
        max_time=timedelta(seconds=recipe.max_time_s) if recipe.max_time_s else None,
        # Order matters: `best` updates its state before `latest` writes it to disk.
        callbacks=[_StampCheckpoints(meta), *([best] if has_val else []), latest, reporter],
        logger=CSVLogger(workdir, name="logs") if log_csv else False,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if has_val else 0,
        default_root_dir=workdir,
    )
    before = network_state(last)[1] if resume and plan.distributed else 0
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    except SIGTERMException as exc:  # Lightning's own: it stops after the current step
        raise Interrupted(f"training stopped by SIGTERM; {last} is kept to resume") from exc

    completed = trainer.current_epoch
    start = reporter.start_epoch if reporter.start_epoch is not None else completed
    if plan.distributed:
        # The epochs ran in forked processes: this one learns how far they got from the
        # checkpoint they wrote (its progress events and history stayed with them).
        completed = network_state(last)[1] if last.exists() else before
        start = before
    best_path = Path(best.best_model_path) if best.best_model_path and has_val else None
    if best_path is None or not best_path.exists():
        best_path = last if last.exists() else None
    if best_path is not None:
        state, best_epoch = network_state(best_path)
    else:  # stopped by the time limit before a single epoch ended
        state = {k: v.detach().cpu() for k, v in system.network.state_dict().items()}
        best_epoch = None
    system.network.load_state_dict(state)
    return FitResult(
        state=state,
        best_epoch=best_epoch,
        epochs_run=completed - start,
        epochs_completed=completed,
        resumed=resume,
        stopped_by_time=recipe.max_time_s is not None and completed < recipe.epochs,
        history=reporter.history,
    )


DEVICES_ENV = "LABELLOOP_TRAIN_DEVICES"


@dataclass(frozen=True)
class DevicePlan:
    """Where a run trains: Lightning's accelerator, device count and strategy."""

    accelerator: str  # "cpu" or "cuda"
    devices: int
    strategy: str  # "auto" on one device, "ddp_fork" across several

    @property
    def distributed(self) -> bool:
        return self.devices > 1


def device_plan(value: str | None = None) -> DevicePlan:
    """The devices of `value` (default: $LABELLOOP_TRAIN_DEVICES, else "1"): "1" is one
    GPU where CUDA is present, else the CPU; "N" or "all" spans N (every visible) GPUs
    with DDP; "cpu" forces the CPU and "cpu:N" runs DDP over N CPU processes (what tests
    use to exercise the distributed path on machines without GPUs).

    DDP runs in forked processes (`ddp_fork`): the alternatives re-run the program
    (inside a Celery worker that would start another worker) or pickle the training,
    whose progress callback holds database handles. Lightning refuses the fork when this
    process has already used CUDA, so a worker that trains on several GPUs must do
    nothing else on them itself."""
    raw = (value if value is not None else os.environ.get(DEVICES_ENV) or "1").strip().lower()
    kind, count = ("cpu", raw[4:] or "1") if raw.startswith("cpu") else ("gpu", raw)
    valid = (count.isdigit() and int(count) >= 1) or (kind == "gpu" and count == "all")
    if not valid or (kind == "cpu" and raw not in ("cpu", f"cpu:{count}")):
        raise ConfigError(f"{DEVICES_ENV}={raw!r}: expected cpu, cpu:N, N or all")
    if kind == "cpu" or not torch.cuda.is_available():
        n = int(count) if kind == "cpu" else 1
        return DevicePlan("cpu", n, "ddp_fork" if n > 1 else "auto")
    visible = torch.cuda.device_count()
    n = visible if count == "all" else min(int(count), visible)
    return DevicePlan("cuda", n, "ddp_fork" if n > 1 else "auto")


def native_bf16(device: str) -> bool:
    """Whether `device` ("cpu" / "cuda") computes in bfloat16 natively rather than by
    emulation (which is slower than float32): AVX512-BF16 or AMX on CPU."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def _cuda_bf16_in_child() -> bool:
    """`native_bf16("cuda")` asked in a child process: asking here would initialise CUDA
    in this process, after which Lightning cannot fork the DDP workers."""
    import subprocess

    code = "import torch; print(torch.cuda.is_bf16_supported())"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == "True"


def trainer_precision(precision: str, plan: DevicePlan | None = None) -> str:
    """Lightning's precision for a recipe's `precision` ("32", "bf16", "auto") on the
    devices of `plan` (default: `device_plan()`). An explicit "bf16" on a CPU that only
    emulates bfloat16 is honoured but logged: there it trains several times slower than
    float32, a cost nobody asking for mixed precision means to pay."""
    if precision == "32":
        return "32-true"
    plan = plan or device_plan()
    if precision == "bf16" and plan.accelerator == "cpu" and not native_bf16("cpu"):
        _log.warning(
            "precision bf16 asked for, but this CPU emulates bfloat16 (no AVX512-BF16 or "
            "AMX): training will be several times slower than in float32; "
            "`precision: auto` takes float32 here"
        )
    if precision == "auto":
        if plan.accelerator == "cuda" and plan.distributed:
            native = _cuda_bf16_in_child()
        else:
            native = native_bf16(plan.accelerator)
        precision = "bf16" if native else "32"
    return "bf16-mixed" if precision == "bf16" else "32-true"


def save_weights(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write a bare state_dict atomically: never a half-written weights file."""
    partial = path.with_suffix(".part")
    torch.save(state, partial)
    os.replace(partial, path)
    return path


def lr_factor(progress: float, scheduler: str) -> float:
    """Learning-rate multiplier at `progress` in [0, 1] of the run.

    Computed from progress rather than stored step counts, so a run resumed with a larger
    budget stretches its schedule instead of failing or restarting it.
    """
    p = min(max(progress, 0.0), 1.0)
    if scheduler == "constant":
        return 1.0
    if scheduler == "onecycle":
        if p < WARMUP_FRACTION:
            return FINAL_LR_FACTOR + (1 - FINAL_LR_FACTOR) * p / WARMUP_FRACTION
        p = (p - WARMUP_FRACTION) / (1 - WARMUP_FRACTION)
    return FINAL_LR_FACTOR + (1 - FINAL_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * p))


class BudgetedSystem(pl.LightningModule):
    """Base for every kind's LightningModule: holds `network` and `recipe`, and schedules
    the learning rate over the fraction of the budget used (steps or wall-clock)."""

    network: torch.nn.Module
    recipe: BaseRecipe

    def average_weights(self, network: nn.Module, decay: float | None, tau: float) -> None:
        """Train `network` and, when `decay` is set, make `self.network` (what validation
        scores and the harness saves) the exponential moving average of its weights.

        Averaging smooths the noisy updates of small-batch training from scratch: the
        kept weights sit between the last steps' rather than at the last one. The decay
        ramps up as decay * (1 - exp(-updates / tau)), so the average follows the
        network closely while it is still far from trained.
        """
        self.ema_decay, self.ema_tau = decay, tau
        if decay is None:
            self.network = network
        else:
            self.student = network
            self.network = copy.deepcopy(network).requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.float64))

    @property
    def trained(self) -> nn.Module:
        """The network the optimiser updates: `network`, or the one it averages."""
        student = self._modules.get("student")
        return student if student is not None else self.network

    def start_from(self, state: dict[str, torch.Tensor]) -> None:
        """Load a saved network's weights into the trained network and its average."""
        for module in {id(m): m for m in (self.trained, self.network)}.values():
            module.load_state_dict(state, strict=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        student = self._modules.get("student")
        if student is None or self.ema_decay is None:
            return
        self.ema_updates += 1
        d = self.ema_decay * (1 - math.exp(-float(self.ema_updates) / self.ema_tau))
        with torch.no_grad():
            live = student.state_dict()
            for k, v in self.network.state_dict().items():
                if v.dtype.is_floating_point:
                    v.mul_(d).add_(live[k].detach(), alpha=1 - d)
                else:
                    v.copy_(live[k])

    def _progress(self) -> float:
        total = self.trainer.estimated_stepping_batches
        done = self.global_step / total if total and math.isfinite(total) else 0.0
        limit = self.recipe.max_time_s
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        if limit and timer is not None:
            # The Timer's elapsed time survives a resume from checkpoint.
            done = max(done, timer.time_elapsed("train") / limit)
        return done

    def configure_optimizers(self) -> dict[str, Any]:
        params = self.trained.parameters()
        r = self.recipe
        if r.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=r.lr, momentum=0.937, nesterov=True, weight_decay=r.weight_decay
            )
        else:
            opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda _step: lr_factor(self._progress(), r.scheduler)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@dataclass(frozen=True)
class TrainingPlan:
    """What a model kind fills into `train`, the one training template."""

    task: str  # the recipes it trains (`BaseRecipe.task`)
    # A validation metric the system logs, higher is better: it picks the best epoch.
    monitor: str
    build_datamodule: Callable[[dict[str, Any], Any, Fetch], ManifestDataModule]
    # The LightningModule around a fresh network, given the DataModule (labels, weights).
    build_system: Callable[[Any, Any], BudgetedSystem]
    # The kind's evaluation of the trained network on the val split (labels, recipe and
    # already loaded samples come from the DataModule).
    evaluate_val: Callable[[nn.Module, Any, Any], dict[str, Any]]
    # Temperature scaling fitted on the val split after training (see `calibration`);
    # the fit goes into the val metrics as "calibration".
    calibration: Calibration | None = None


def warm_start(system: BudgetedSystem, weights: bytes, name: str) -> None:
    """Start from a saved network's weights (read weights-only) instead of from scratch:
    the loop as users run it fine-tunes the previous round's model on the grown set."""
    state = load_state_dict(weights)
    try:
        system.start_from(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"warm-start weights {name} do not fit this recipe's network: {exc}"
        ) from None


def train(
    plan: TrainingPlan,
    manifest: dict[str, Any],
    recipe: BaseRecipe,
    fetch: Fetch,
    workdir: Path,
    *,
    on_progress: Progress | None = None,
    log_csv: bool = False,
) -> TrainOutcome:
    """Train (or resume) the recipe's network on the manifest's train split; the best
    epoch by `plan.monitor` is kept and its val metrics go into the outcome. Everything
    goes into `workdir` (see `fit`): Lightning checkpoints, then `model.pt`, a bare
    state_dict of the kept epoch's network."""
    t0 = time.monotonic()
    if recipe.task != plan.task:
        raise ConfigError(f"{plan.task} training got a {recipe.task!r} recipe")
    workdir = Path(workdir)
    with quiet_and_threaded():
        pl.seed_everything(recipe.seed, workers=True, verbose=False)
        dm = plan.build_datamodule(manifest, recipe, fetch)
        has_val = dm.has_val()
        system = plan.build_system(dm, recipe)
        if recipe.init_from:
            warm_start(system, fetch(recipe.init_from), recipe.init_from)
        result = fit(
            system,
            dm,
            recipe,
            manifest,
            workdir,
            monitor=plan.monitor,
            has_val=has_val,
            on_progress=on_progress,
            log_csv=log_csv,
        )
        weights_path = save_weights(result.state, workdir / WEIGHTS_FILE)
        network = system.network.cpu().eval()
        metrics = plan.evaluate_val(network, dm, recipe) if has_val else {}
        if has_val and plan.calibration is not None:
            data = plan.calibration.collect(network, dm, recipe)
            if data is not None:
                metrics["calibration"] = calibrate(*data, plan.calibration.mode)
    return TrainOutcome(
        weights_path=weights_path,
        metrics=metrics,
        epochs_run=result.epochs_run,
        epochs_completed=result.epochs_completed,
        best_epoch=result.best_epoch,
        last_epoch=result.epochs_completed,
        duration_s=time.monotonic() - t0,
        resumed=result.resumed,
        stopped_by_time=result.stopped_by_time,
        recipe_hash=recipe.recipe_hash(),
        history=result.history,
    )
