"""Training loop of the denoising autoencoder: checkpoints, resume, signals, DDP.

Reproducibility: every batch draws its noise and modality dropout from a generator
seeded by ``(seed, epoch, batch, rank)``, and the data order of each epoch comes from a
``DistributedSampler`` seeded by ``(seed, epoch)``. A run resumed from any checkpoint,
even one written mid-epoch by SIGTERM, therefore replays exactly the batches of an
uninterrupted run, and on the CPU ends with the same weights.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA) and each rank reads its shard of
the training set; rank 0 alone validates, checkpoints and writes the model.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from anomaly.io import atomic_path
from anomaly.normative.network import coarse_noise, drop_modalities, network_input

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "training_log.csv"


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


@dataclass
class DistributedContext:
    """Rank, world size and device of this process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str) -> torch.device:
    """Map ``auto|cpu|cuda`` to a torch device, refusing CUDA where there is none."""
    from anomaly.io import AnomalyInputError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AnomalyInputError("--device cuda: no CUDA device is available on this machine")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise AnomalyInputError(f"--device: expected auto, cpu or cuda; got {device!r}")
    return torch.device(device)


def init_distributed(device: str) -> DistributedContext:
    """Join the torchrun process group if there is one (``WORLD_SIZE`` > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    base = resolve_device(device)
    if world_size <= 1:
        return DistributedContext(device=base)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        torch.cuda.set_device(local_rank)
        base = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if base.type == "cuda" else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, device=base)


def _batch_generator(seed: int, epoch: int, batch: int, rank: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 101 + rank)
    return g


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between batches."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal API
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
                      on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
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

    Raises
    ------
    TrainingInterrupted
        After SIGINT/SIGTERM, once a checkpoint has been written.
    """
    from tqdm.auto import tqdm

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
    batches_per_epoch = math.ceil(len(sampler) / settings.batch_size)
    total_steps = settings.epochs * batches_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=max(total_steps, 1), pct_start=0.1)

    start_epoch, start_batch, history = 0, 0, []
    checkpoint_path = workdir / CHECKPOINT_NAME
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, start_batch = int(state["epoch"]), int(state["batch"])
        history = _read_log(workdir / LOG_NAME)[:start_epoch]

    def save_checkpoint(epoch: int, batch: int) -> None:
        if not ctx.is_main:
            return
        state = {"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "batch": batch}
        with atomic_path(checkpoint_path) as tmp:
            torch.save(state, tmp)

    with _StopFlag() as stop:
        for epoch in range(start_epoch, settings.epochs):
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            order = list(sampler)
            first = start_batch if epoch == start_epoch else 0
            batches = [order[i:i + settings.batch_size]
                       for i in range(0, len(order), settings.batch_size)]
            model.train()
            running, seen = 0.0, 0
            bar = tqdm(total=len(batches), initial=first, desc=f"epoch {epoch + 1}/{settings.epochs}",
                       unit="batch", disable=not (progress and ctx.is_main), leave=False)
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(train_set, [i for b in batches[first:] for i in b]),
                batch_size=settings.batch_size, shuffle=False, num_workers=num_workers)
            for b, (images, present) in enumerate(loader, start=first):
                if _should_stop(stop.requested, ctx):
                    save_checkpoint(epoch, b)
                    bar.close()
                    raise TrainingInterrupted(
                        f"training interrupted at epoch {epoch + 1}, batch {b}; "
                        f"checkpoint saved to {checkpoint_path}")
                g = _batch_generator(settings.seed, epoch, b, ctx.rank)
                images, present = images.to(device), present.to(device)
                kept = drop_modalities(present.cpu(), probability=settings.modality_dropout,
                                       generator=g).to(device)
                noise = coarse_noise(images.shape, scale=settings.noise_scale,
                                     coarseness=settings.noise_coarseness, generator=g,
                                     mask=mask_t.cpu()).to(device)
                recon = model(network_input(images + noise, kept))
                loss = masked_mse(recon, images, kept, mask_t)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                running += loss.item() * len(images)
                seen += len(images)
                bar.set_postfix(loss=f"{running / seen:.4f}")
                bar.update(1)
            bar.close()
            row = {"epoch": epoch + 1, "train_loss": running / max(seen, 1),
                   "val_loss": float("nan"), "seconds": time.perf_counter() - t0,
                   "lr": scheduler.get_last_lr()[0]}
            if ctx.is_main and val_set is not None and len(val_set):
                row["val_loss"] = evaluate(network, val_set, mask_t, settings, device)
            history.append(row)
            save_checkpoint(epoch + 1, 0)
            if ctx.is_main:
                _write_log(workdir / LOG_NAME, history)
                if on_epoch is not None:
                    on_epoch(row)
    return history


def _should_stop(requested: bool, ctx: DistributedContext) -> bool:
    """Agree across ranks to stop, so that no rank waits forever in an all-reduce."""
    if ctx.world_size <= 1:
        return requested
    flag = torch.tensor([1.0 if requested else 0.0], device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


@torch.no_grad()
def evaluate(network: torch.nn.Module, dataset: torch.utils.data.Dataset, mask_t: torch.Tensor,
             settings: TrainSettings, device: torch.device) -> float:
    """Denoising loss on ``dataset`` with fixed noise (comparable across epochs)."""
    network.eval()
    total, count = 0.0, 0
    for i in range(len(dataset)):
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
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) if k != "epoch" else int(v) for k, v in row.items()}
                for row in csv.DictReader(fh)]
