"""Preprocessed-subject cache, the statistics gathered while filling it, and the
torch dataset that streams it.

Training reads every control many times, so each one is preprocessed once (resampled
to the model grid, intensity-normalised) and stored as a float16 ``.npy`` file. The
dataset memory-maps those files, so memory stays flat however many subjects there are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anomaly.io import AnomalyInputError, Subject, atomic_path
from anomaly.normative.calibration import standardise
from anomaly.preprocess import Preprocessed


@dataclass
class CachedSubject:
    """One preprocessed subject on disk."""

    label: str
    path: Path
    present: np.ndarray
    age: float | None
    sex: str | None


def cache_key(subject: Subject, settings: dict) -> str:
    """Short hash of a subject's files (path, size, mtime) and the preprocessing settings.

    A changed input or setting gives a new key, so a stale cache is never reused.
    """
    h = hashlib.sha256(repr(sorted(settings.items())).encode())
    for modality, path in sorted(subject.images.items()):
        stat = Path(path).stat()
        h.update(f"{modality}:{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def build_cache(subjects: Sequence[Subject], cache_dir: Path, settings: dict,
                preprocess: Callable[[Subject], Preprocessed], *,
                on_subject: Callable[[Subject, Preprocessed], None] | None = None,
                progress: bool = True) -> list[CachedSubject]:
    """Preprocess each subject once into ``cache_dir`` (reusing valid cached files).

    Parameters
    ----------
    subjects : sequence of Subject
    cache_dir : Path
    settings : dict
        Preprocessing settings that enter the cache key.
    preprocess : callable
        ``subject -> Preprocessed``.
    on_subject : callable, optional
        Called with every freshly preprocessed or reloaded subject (used to accumulate
        normalisation statistics in the same pass).
    progress : bool
        Show a progress bar.
    """
    from tqdm.auto import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = []
    for subject in tqdm(subjects, desc="preprocessing", unit="subject", disable=not progress):
        key = cache_key(subject, settings)
        path = cache_dir / f"sub-{subject.label}_{key}.npy"
        present_path = cache_dir / f"sub-{subject.label}_{key}_present.npy"
        if path.exists() and present_path.exists():
            data = np.load(path, mmap_mode="r")
            present = np.load(present_path)
            if on_subject is not None:
                on_subject(subject, Preprocessed(data=np.asarray(data, np.float32), present=present,
                                                 modalities=list(settings["modalities"]), qc={}))
        else:
            prep = preprocess(subject)
            present = prep.present
            stored = prep.data.astype(np.float16)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, stored)
            with atomic_path(present_path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, present)
            if on_subject is not None:
                # The stored (float16) values, as a later run reusing the cache sees them:
                # a resumed fit must compute the same normalisation statistics.
                prep.data = stored.astype(np.float32)
                on_subject(subject, prep)
        cached.append(CachedSubject(label=subject.label, path=path, present=present,
                                    age=subject.age, sex=subject.sex))
    return cached


class CachedDataset(torch.utils.data.Dataset):
    """Stream cached subjects, standardised per channel, as float32 tensors.

    Parameters
    ----------
    subjects : sequence of CachedSubject
    channel_mean, channel_std : ndarray, shape (C,)
        Per-channel standardisation learnt on the training controls.
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask of the grid; voxels outside are set to zero.
    """

    def __init__(self, subjects: Sequence[CachedSubject], channel_mean: np.ndarray,
                 channel_std: np.ndarray, mask: np.ndarray) -> None:
        self.subjects = list(subjects)
        self.mean = np.asarray(channel_mean, np.float32)
        self.std = np.asarray(channel_std, np.float32)
        self.mask = np.asarray(mask, bool)

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        subject = self.subjects[index]
        data = np.load(subject.path, mmap_mode="r").astype(np.float32)
        images = standardise(data, subject.present, self.mean, self.std, self.mask)
        return torch.from_numpy(images), torch.from_numpy(np.asarray(subject.present, bool))


class ChannelStatistics:
    """Streamed statistics of the training controls, accumulated while caching.

    Per channel, inside the brain mask: count, sum and sum of squares (for the
    standardisation), and the voxelwise mean image (the normative mean, used for the
    global PET level). Sums are float64 so that the order of subjects does not matter
    at float32 precision.

    Parameters
    ----------
    modalities : sequence of str
    mask : ndarray of bool, shape (X, Y, Z)
    labels : collection of str
        Subjects that count (the training controls); others are skipped.
    """

    def __init__(self, modalities: Sequence[str], mask: np.ndarray, labels: Collection[str]) -> None:
        self.modalities = list(modalities)
        self.mask = mask
        self.labels = set(labels)
        n = len(self.modalities)
        self.sums = np.zeros((n, 3))  # count, sum, sum of squares inside the brain
        self.mean_acc = np.zeros((n,) + mask.shape)
        self.mean_count = np.zeros(n)

    def add(self, subject: Subject, prep: Preprocessed) -> None:
        """Accumulate one subject (a callback of :func:`build_cache`)."""
        if subject.label not in self.labels:
            return
        for c in np.flatnonzero(prep.present):
            values = prep.data[c][self.mask].astype(np.float64)
            self.sums[c] += (values.size, values.sum(), (values ** 2).sum())
            self.mean_acc[c] += prep.data[c]
            self.mean_count[c] += 1

    def finalise(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Channel mean and SD (float64) and the mean image per channel (float32).

        Raises
        ------
        AnomalyInputError
            A modality that no training control has.
        """
        sums = self.sums
        if np.any(sums[:, 0] == 0):
            missing = [m for m, n in zip(self.modalities, sums[:, 0]) if n == 0]
            raise AnomalyInputError(f"no training control has modality {', '.join(missing)}")
        mean = sums[:, 1] / sums[:, 0]
        std = np.sqrt(np.maximum(sums[:, 2] / sums[:, 0] - mean ** 2, 1e-12))
        image = self.mean_acc / np.maximum(self.mean_count, 1)[:, None, None, None]
        return mean, std, image.astype(np.float32)
