"""Training loop of the denoising autoencoder: checkpoints, resume, signals, DDP.

Reproducibility: every batch draws its noise and modality dropout from a generator
seeded by ``(seed, epoch, batch, rank)``, and the data order of each epoch comes from a
``DistributedSampler`` seeded by ``(seed, epoch)``. A run resumed from any checkpoint,
even one written mid-epoch by SIGTERM, therefore replays exactly the batches of an
uninterrupted run, and on the CPU ends with the same weights.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1, joined by
:mod:`anomaly.normative.distributed`) the model is wrapped in
``DistributedDataParallel`` and each rank reads its shard of the training set; rank 0
alone validates and checkpoints. ``init_distributed`` and ``DistributedContext`` are
re-exported here for callers of the earlier layout.
"""

from __future__ import annotations

import csv
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from anomaly.io import AnomalyInputError, atomic_path
from anomaly.normative.distributed import (
    DistributedContext,
    agree_to_stop,
    init_distributed,
)
from anomaly.normative.network import (
    augment_batch,
    coarse_noise,
    drop_modalities,
    network_input,
)

__all__ = ["CHECKPOINT_NAME", "LOG_NAME", "DistributedContext", "TrainSettings", "TrainingInterrupted",
           "evaluate", "init_distributed", "masked_mse", "run_files", "train_autoencoder"]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "training_log.csv"


def run_files(workdir: Path, tag: str = "") -> tuple[Path, Path]:
    """Checkpoint and CSV log of one training run in ``workdir``.

    ``tag`` names one of several networks trained in the same folder (cross-fitting:
    ``"network2"`` gives ``checkpoint-network2.pt`` and ``training_log-network2.csv``);
    the empty tag gives the historical names, so a single network resumes as before.
    """
    suffix = f"-{tag}" if tag else ""
    return (workdir / CHECKPOINT_NAME.replace(".pt", f"{suffix}.pt"),
            workdir / LOG_NAME.replace(".csv", f"{suffix}.csv"))


class TrainingInterrupted(RuntimeError):
    """Raised after a SIGINT/SIGTERM once the checkpoint is safely on disk."""


@dataclass
class TrainSettings:
    """Hyper-parameters of the autoencoder training (all stored in metadata.json)."""

    epochs: int = 20
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-5
    noise_scale: float = 0.3
    noise_coarseness: int = 8
    modality_dropout: float = 0.2
    seed: int = 0
    augment: float = 0.0


def steps_per_epoch(n_train: int, batch_size: int, world_size: int = 1) -> int:
    """Optimisation steps of one epoch per process: the distributed sampler gives each of
    ``world_size`` processes ``ceil(n_train / world_size)`` subjects, in batches."""
    return math.ceil(math.ceil(n_train / max(world_size, 1)) / batch_size)


def _batch_generator(seed: int, epoch: int, batch: int, rank: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 101 + rank)
    return g


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between batches."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def masked_mse(recon: torch.Tensor, target: torch.Tensor, present: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over brain voxels of the channels present."""
    weight = mask * present.to(recon.dtype)[:, :, None, None, None]
    return ((recon - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


def train_autoencoder(network: torch.nn.Module, train_set: torch.utils.data.Dataset,
                      val_set: torch.utils.data.Dataset | None, mask: np.ndarray,
                      settings: TrainSettings, workdir: Path, *, ctx: DistributedContext,
                      resume: bool = False, progress: bool = True, num_workers: int = 0,
                      on_epoch: Callable[[dict], None] | None = None, tag: str = "",
                      label: str = "") -> list[dict]:
    """Train ``network`` in place and return the per-epoch log.

    Parameters
    ----------
    network : torch.nn.Module
        Built by :func:`anomaly.normative.network.build_network`.
    train_set, val_set : Dataset
        Yield ``(images (C, X, Y, Z), present (C,))``.
    mask : ndarray of bool
        Brain mask of the grid.
    settings : TrainSettings
    workdir : Path
        Where the checkpoint and the CSV log go.
    ctx : DistributedContext
    resume : bool
        Continue from ``workdir/checkpoint.pt`` if it exists.
    progress : bool
        Show a progress bar with the running loss (rank 0).
    num_workers : int
        DataLoader worker processes.
    on_epoch : callable, optional
        Called with each epoch's log row.
    tag : str
        Names this run's checkpoint and log in ``workdir`` (:func:`run_files`).
    label : str
        Prefix of the progress bar, e.g. "network 2/3" when several networks train.

    Raises
    ------
    TrainingInterrupted
        After SIGINT/SIGTERM, once a checkpoint has been written.
    """
    checkpoint, log = run_files(workdir, tag)
    run = _Run.start(network, train_set, mask, settings, checkpoint, ctx, label=label)
    start_epoch, start_batch, history = 0, 0, []
    if resume and run.checkpoint.exists():
        start_epoch, start_batch = run.restore()
        history = _read_log(log)[:start_epoch]
    with _StopFlag() as stop:
        for epoch in range(start_epoch, settings.epochs):
            first = start_batch if epoch == start_epoch else 0
            row = run.epoch(train_set, epoch, first, stop, progress=progress, num_workers=num_workers)
            if ctx.is_main and val_set is not None and len(val_set):
                row["val_loss"] = evaluate(network, val_set, run.mask_t, settings, run.device)
            history.append(row)
            run.save_checkpoint(epoch + 1, 0)
            if ctx.is_main:
                _write_log(log, history)
                if on_epoch is not None:
                    on_epoch(row)
    return history


@dataclass
class _Run:
    """What one training run updates: network, optimiser, schedule, sampler, checkpoint."""

    network: torch.nn.Module
    model: torch.nn.Module  # the network, wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: DistributedSampler
    mask_t: torch.Tensor
    settings: TrainSettings
    checkpoint: Path
    ctx: DistributedContext
    label: str = ""

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @classmethod
    def start(cls, network: torch.nn.Module, train_set: torch.utils.data.Dataset, mask: np.ndarray,
              settings: TrainSettings, checkpoint: Path, ctx: DistributedContext, label: str = "") -> _Run:
        """Move the network to the device and build optimiser, sampler and schedule."""
        device = ctx.device
        network.to(device)
        mask_t = torch.from_numpy(np.asarray(mask, np.float32)).to(device)
        model = network
        if ctx.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                network, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = torch.optim.AdamW(network.parameters(), lr=settings.lr,
                                      weight_decay=settings.weight_decay)
        sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank,
                                     shuffle=True, seed=settings.seed, drop_last=False)
        total_steps = settings.epochs * steps_per_epoch(len(train_set), settings.batch_size, ctx.world_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings.lr, total_steps=max(total_steps, 1), pct_start=0.1)
        return cls(network, model, optimizer, scheduler, sampler, mask_t, settings, checkpoint, ctx, label)

    def restore(self) -> tuple[int, int]:
        """Load the checkpoint; return the epoch and batch it was written at.

        Raises
        ------
        AnomalyInputError
            The checkpoint was written with other training settings or another network:
            continuing it would silently mix two runs (or fail deep inside torch).
        """
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        self._check_compatible(state)
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return int(state["epoch"]), int(state["batch"])

    def _check_compatible(self, state: dict) -> None:
        """Refuse a checkpoint of another run (settings recorded since 0.2, and shapes)."""
        saved = state.get("settings")
        current = asdict(self.settings)
        changed = [f"{k} {saved[k]} -> {current[k]}" for k in current
                   if saved is not None and k in saved and saved[k] != current[k]]
        shapes = {k: tuple(v.shape) for k, v in self.network.state_dict().items()}
        if {k: tuple(v.shape) for k, v in state["network"].items()} != shapes:
            changed.append("network architecture")
        if changed:
            raise AnomalyInputError(
                f"{self.checkpoint}: written with other settings ({', '.join(changed)}); "
                f"rerun with the same settings, or without --resume to start again")

    def save_checkpoint(self, epoch: int, batch: int) -> None:
        """Write the checkpoint atomically (rank 0 only), with the settings it continues."""
        if not self.ctx.is_main:
            return
        state = {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "epoch": epoch, "batch": batch,
                 "settings": asdict(self.settings)}
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)

    def epoch(self, train_set: torch.utils.data.Dataset, epoch: int, first: int, stop: _StopFlag, *,
              progress: bool, num_workers: int) -> dict:
        """Train one epoch from batch ``first``; return its log row (validation not yet run)."""
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        size = self.settings.batch_size
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        self.model.train()
        running, seen = 0.0, 0
        prefix = f"{self.label}, " if self.label else ""
        bar = tqdm(total=len(batches), initial=first, desc=f"{prefix}epoch {epoch + 1}/{self.settings.epochs}",
                   unit="batch", disable=not (progress and self.ctx.is_main), leave=False)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(train_set, [i for b in batches[first:] for i in b]),
            batch_size=size, shuffle=False, num_workers=num_workers)
        for b, (images, present) in enumerate(loader, start=first):
            if agree_to_stop(stop.requested, self.ctx):
                self.save_checkpoint(epoch, b)
                bar.close()
                raise TrainingInterrupted(f"training interrupted at epoch {epoch + 1}, batch {b}; "
                                          f"checkpoint saved to {self.checkpoint}")
            running += self.step(images, present, epoch, b) * len(images)
            seen += len(images)
            bar.set_postfix(loss=f"{running / seen:.4f}")
            bar.update(1)
        bar.close()
        return {"epoch": epoch + 1, "train_loss": running / max(seen, 1), "val_loss": float("nan"),
                "seconds": time.perf_counter() - t0, "lr": self.scheduler.get_last_lr()[0]}

    def step(self, images: torch.Tensor, present: torch.Tensor, epoch: int, batch: int) -> float:
        """One optimisation step, with the batch's own seeded noise and modality dropout."""
        settings, device = self.settings, self.device
        g = _batch_generator(settings.seed, epoch, batch, self.ctx.rank)
        images, present = images.to(device), present.to(device)
        kept = drop_modalities(present.cpu(), probability=settings.modality_dropout,
                               generator=g).to(device)
        noise = coarse_noise(images.shape, scale=settings.noise_scale,
                             coarseness=settings.noise_coarseness, generator=g,
                             mask=self.mask_t.cpu()).to(device)
        # Drawn after the noise: without augmentation the batch is what it always was.
        images = augment_batch(images.cpu(), strength=settings.augment, generator=g,
                               mask=self.mask_t.cpu()).to(device)
        recon = self.model(network_input(images + noise, kept))
        loss = masked_mse(recon, images, kept, self.mask_t)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()


#: Held-out subjects whose denoising loss is logged after each epoch. The loss only
#: monitors training (nothing is selected on it); with cross-fitting the held-out fold is
#: half the controls, and scoring all of them every epoch took longer than training.
MAX_VALIDATION_SUBJECTS = 8


@torch.no_grad()
def evaluate(network: torch.nn.Module, dataset: torch.utils.data.Dataset, mask_t: torch.Tensor,
             settings: TrainSettings, device: torch.device) -> float:
    """Denoising loss with fixed noise (comparable across epochs) on the first
    :data:`MAX_VALIDATION_SUBJECTS` subjects of ``dataset``."""
    network.eval()
    total, count = 0.0, 0
    for i in range(min(len(dataset), MAX_VALIDATION_SUBJECTS)):
        images, present = dataset[i]
        images, present = images[None].to(device), present[None].to(device)
        g = _batch_generator(settings.seed, -1, i, 0)
        noise = coarse_noise(images.shape, scale=settings.noise_scale,
                             coarseness=settings.noise_coarseness, generator=g,
                             mask=mask_t.cpu()).to(device)
        recon = network(network_input(images + noise, present))
        total += float(masked_mse(recon, images, present, mask_t))
        count += 1
    return total / max(count, 1)


def _write_log(path: Path, history: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) if k != "epoch" else int(v) for k, v in row.items()}
                for row in csv.DictReader(fh)]
