"""The normative model estimator: fit on healthy controls, score any subject.

Two methods share one API and one calibration:

``ae`` (default)
    A MONAI 3D U-Net trained as a denoising autoencoder with coarse noise on the
    healthy controls (:mod:`anomaly.normative.network`). The residual of a subject is
    its standardised image minus the network's reconstruction.
``zscore``
    The classical clinical approach (SPM single-subject analysis, 3D-SSP): the residual
    is the standardised image itself, so the calibrated z map is the voxelwise
    deviation from the age- and sex-adjusted control mean.

Calibration (:mod:`anomaly.normative.calibration`) turns residuals into signed z maps
per modality with a voxelwise linear model of age and sex, fitted on controls the
network never saw (``val_fraction`` of them; the z-score model uses all controls).

Combined anomaly map: each modality contributes its z in the direction a lesion pushes
it (:data:`LESION_SIGN`: lower T1w signal and lower FDG uptake, higher FLAIR/T2w
signal), clipped at zero; the map is the mean of these over the modalities present, so
it is >= 0, in z units, and comparable between subjects missing different modalities.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from anomaly.io import AnomalyInputError, Subject
from anomaly.normative.calibration import smooth_in_mask
from anomaly.preprocess import Grid, Preprocessed, make_grid, preprocess_subject, template_images

#: Sign of a lesion's effect per modality (BIDS suffix); others default to +1.
LESION_SIGN = {"T1w": -1.0, "T2w": 1.0, "FLAIR": 1.0, "pet": -1.0, "PD": 1.0}
METHODS = ("ae", "zscore")
#: Atlas region patterns used as PET reference regions (Neuromorphometrics names).
PET_REFERENCE_PATTERNS = {"cerebellum": "Cerebell", "brainstem": "Brain_Stem"}


@dataclass
class SubjectScore:
    """Voxel maps of one scored subject, all on the model grid.

    Attributes
    ----------
    z : ndarray, shape (C, X, Y, Z)
        Signed z map per modality; NaN for modalities the subject lacks.
    anomaly : ndarray, shape (X, Y, Z)
        Combined non-negative anomaly map.
    present : ndarray of bool, shape (C,)
    modalities : list of str
    data : ndarray, shape (C, X, Y, Z)
        Normalised input intensities (MRI robust z, PET SUVR).
    qc : dict
        Preprocessing quality checks.
    grid : Grid
    """

    z: np.ndarray
    anomaly: np.ndarray
    present: np.ndarray
    modalities: list[str]
    data: np.ndarray
    qc: dict
    grid: Grid

    def to_image(self, array: np.ndarray) -> nib.Nifti1Image:
        """Wrap a map of this subject as a NIfTI image in MNI space."""
        return self.grid.to_image(np.asarray(array, np.float32))


def combine_anomaly(z: np.ndarray, present: np.ndarray, modalities: Sequence[str],
                    mask: np.ndarray) -> np.ndarray:
    """Mean over present modalities of the lesion-direction z, clipped at zero.

    NaN voxels of a modality (outside its image's field of view) are left out of the
    mean at that voxel, so a partial scan does not dilute or fake an anomaly.
    """
    total = np.zeros(mask.shape, np.float32)
    count = np.zeros(mask.shape, np.float32)
    for c, m in enumerate(modalities):
        if not present[c]:
            continue
        part = np.clip(LESION_SIGN.get(m, 1.0) * z[c], 0, None)
        covered = np.isfinite(part)
        total += np.where(covered, part, 0.0)  # sums in place: no stacked copy of the maps
        count += covered
    anomaly = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return (anomaly * mask).astype(np.float32, copy=False)


def calibration_size(n_controls: int, val_fraction: float) -> int:
    """Number of controls held out for calibration: the fraction, but at least
    ``min(8, n_controls // 2)``."""
    return max(int(round(val_fraction * n_controls)), min(8, n_controls // 2), 2)


class NormativeModel:
    """Normative model of healthy brains (scikit-learn style estimator).

    Parameters
    ----------
    method : {"ae", "zscore"}
        Denoising autoencoder (default) or classical voxelwise z-score model.
    modalities : sequence of str, optional
        BIDS suffixes to model (e.g. ``("T1w", "FLAIR", "pet")``). Default: every
        modality that all training controls have.
    resolution : float
        Voxel size of the model grid in mm (2, 3 or 4 typical).
    epochs, batch_size, lr : int, int, float
        Autoencoder training.
    channels : sequence of int
        U-Net feature maps per level.
    noise_scale, noise_coarseness : float, int
        Coarse-noise recipe of the denoising autoencoder.
    modality_dropout : float
        Probability of hiding each modality during training.
    val_fraction : float
        Fraction of controls held out from training for validation and calibration,
        raised to at least ``min(8, n_controls // 2)`` because voxelwise SDs from fewer
        subjects are too noisy (the ``zscore`` method calibrates on all controls).
    covariates : bool or "auto"
        Model age and sex in the calibration; "auto" does so when at least 10
        calibration subjects are available.
    smooth_sigma : float
        Gaussian sigma (voxels) applied to residual maps before calibration, in both
        methods, so that z maps describe lesion-sized deviations rather than voxel noise.
    pet_reference : {"cerebellum", "brainstem", "global"}
        PET SUVR reference region.
    seed : int
    device : {"auto", "cpu", "cuda"}
    """

    def __init__(self, method: str = "ae", *, modalities: Sequence[str] | None = None,
                 resolution: float = 2.0, epochs: int = 20, batch_size: int = 2, lr: float = 2e-3,
                 channels: Sequence[int] = (16, 32, 64, 128), noise_scale: float = 0.3,
                 noise_coarseness: int = 8, modality_dropout: float = 0.2,
                 val_fraction: float = 0.2, covariates: bool | str = "auto",
                 smooth_sigma: float = 1.0, pet_reference: str = "cerebellum",
                 seed: int = 0, device: str = "auto") -> None:
        self.method = method
        self.modalities = modalities
        self.resolution = resolution
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.channels = channels
        self.noise_scale = noise_scale
        self.noise_coarseness = noise_coarseness
        self.modality_dropout = modality_dropout
        self.val_fraction = val_fraction
        self.covariates = covariates
        self.smooth_sigma = smooth_sigma
        self.pet_reference = pet_reference
        self.seed = seed
        self.device = device

    # ------------------------------------------------------------------ helpers
    def get_params(self) -> dict:
        """Constructor arguments, as scikit-learn's ``get_params`` returns them."""
        keys = ("method", "modalities", "resolution", "epochs", "batch_size", "lr", "channels",
                "noise_scale", "noise_coarseness", "modality_dropout", "val_fraction",
                "covariates", "smooth_sigma", "pet_reference", "seed", "device")
        return {k: getattr(self, k) for k in keys}

    def _check_params(self) -> None:
        if self.method not in METHODS:
            raise AnomalyInputError(f"method: expected one of {', '.join(METHODS)}; got {self.method!r}")
        if self.pet_reference not in (*PET_REFERENCE_PATTERNS, "global"):
            raise AnomalyInputError(
                f"pet_reference: expected cerebellum, brainstem or global; got {self.pet_reference!r}")
        if not 0 < self.val_fraction < 1:
            raise AnomalyInputError(f"val_fraction: expected a number in (0, 1); got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise AnomalyInputError("epochs and batch_size must be at least 1")

    def _check_fitted(self) -> None:
        if not hasattr(self, "calibration_"):
            raise RuntimeError("this NormativeModel is not fitted yet; call fit() or load()")

    def _reference_masks(self, grid: Grid) -> dict[str, np.ndarray]:
        from anomaly.atlas import DEFAULT_ATLAS, Atlas

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small labels lost at coarse grids do not matter here
            atlas = Atlas.load(DEFAULT_ATLAS).resample_to(grid)
        return {name: atlas.region_mask(pattern) for name, pattern in PET_REFERENCE_PATTERNS.items()}

    def preprocess(self, images: Mapping[str, object]) -> Preprocessed:
        """Resample and normalise one subject's images onto the model grid.

        Parameters
        ----------
        images : mapping
            Modality (BIDS suffix) -> path or nibabel image.
        """
        grid = self.grid_ if hasattr(self, "grid_") else make_grid(self.resolution)
        modalities = self.modalities_ if hasattr(self, "modalities_") else list(self.modalities)
        if not hasattr(self, "_ref_masks"):
            self._ref_masks = self._reference_masks(grid)
        return preprocess_subject(images, grid, modalities, pet_reference=self.pet_reference,
                                  reference_masks=self._ref_masks)

    # ---------------------------------------------------------------------- fit
    def fit(self, subjects: Sequence[Subject], *, workdir: str | Path | None = None,
            resume: bool = False, progress: bool = True, num_workers: int = 0,
            keep_cache: bool = False) -> "NormativeModel":
        """Fit the model on healthy controls.

        Parameters
        ----------
        subjects : sequence of Subject
            From :func:`anomaly.io.find_subjects`; only ``group == "control"`` are used.
        workdir : path, optional
            Folder for the preprocessing cache, checkpoints and the training log
            (default: a temporary folder). Give the model folder to make ``resume`` work.
        resume : bool
            Continue an interrupted training from ``workdir``'s checkpoint.
        progress : bool
            Show progress bars.
        num_workers : int
            DataLoader workers for the autoencoder.
        keep_cache : bool
            Keep the preprocessed-array cache after a successful fit.

        Returns
        -------
        self
        """
        import shutil
        import tempfile

        import torch

        from anomaly.normative import trainer
        from anomaly.normative.calibration import VoxelwiseLinearModel
        from anomaly.normative.data import CachedDataset, build_cache, standardise
        from anomaly.normative.network import build_network

        self._check_params()
        controls = [s for s in subjects if s.group == "control"]
        if len(controls) < 4:
            raise AnomalyInputError(
                f"fit-normative needs at least 4 controls (group 'control' in participants.tsv); "
                f"found {len(controls)}")
        modalities = self._choose_modalities(controls)
        self.modalities_ = modalities
        self.grid_ = make_grid(self.resolution)
        grid = self.grid_
        mask = template_images(grid)["mask"] > 0.5
        self.mask_ = mask
        ctx = trainer.init_distributed(self.device)

        tmp_workdir = workdir is None
        workdir = Path(tempfile.mkdtemp(prefix="anomaly-fit-")) if tmp_workdir else Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        cache_dir = workdir / "cache"

        # Split controls: training set for the network, held-out set for calibration.
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(controls))
        n_cal = calibration_size(len(controls), self.val_fraction)
        if self.method == "ae":
            cal_idx, train_idx = order[:n_cal], order[n_cal:]
        else:
            cal_idx, train_idx = order, order
        n_channels = len(modalities)
        sums = np.zeros((n_channels, 3))  # count, sum, sum of squares inside the brain
        mean_acc = np.zeros((n_channels,) + grid.shape)
        mean_count = np.zeros(n_channels)
        train_labels = {controls[i].label for i in train_idx}

        def accumulate(subject: Subject, prep: Preprocessed) -> None:
            # Statistics of the training controls only: standardisation and the
            # normative mean image (used for the global PET level).
            if subject.label not in train_labels:
                return
            for c in np.flatnonzero(prep.present):
                values = prep.data[c][mask].astype(np.float64)
                sums[c] += (values.size, values.sum(), (values ** 2).sum())
                mean_acc[c] += prep.data[c]
                mean_count[c] += 1

        settings = {"modalities": tuple(modalities), "resolution": float(self.resolution),
                    "pet_reference": self.pet_reference, "grid": grid.shape}
        # Every rank builds (or reuses) the cache: each needs the arrays it trains on.
        cached = build_cache(controls, cache_dir, settings, lambda s: self.preprocess(s.images),
                             on_subject=accumulate, progress=progress and ctx.is_main)
        if np.any(sums[:, 0] == 0):
            missing = [m for m, n in zip(modalities, sums[:, 0]) if n == 0]
            raise AnomalyInputError(f"no training control has modality {', '.join(missing)}")
        channel_mean = sums[:, 1] / sums[:, 0]
        channel_std = np.sqrt(np.maximum(sums[:, 2] / sums[:, 0] - channel_mean ** 2, 1e-12))
        self.channel_mean_ = channel_mean.astype(np.float32)
        self.channel_std_ = channel_std.astype(np.float32)
        self.control_mean_ = (mean_acc / np.maximum(mean_count, 1)[:, None, None, None]).astype(np.float32)

        self.network_ = None
        self.history_ = []
        if self.method == "ae":
            torch.manual_seed(self.seed)
            network = build_network(n_channels, self.channels)
            train_set = CachedDataset([cached[i] for i in train_idx], channel_mean, channel_std, mask)
            val_set = CachedDataset([cached[i] for i in cal_idx], channel_mean, channel_std, mask)
            settings_t = trainer.TrainSettings(
                epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                noise_scale=self.noise_scale, noise_coarseness=self.noise_coarseness,
                modality_dropout=self.modality_dropout, seed=self.seed)
            self.history_ = trainer.train_autoencoder(
                network, train_set, val_set, mask, settings_t, workdir, ctx=ctx, resume=resume,
                progress=progress, num_workers=num_workers)
            self.network_ = network.cpu().eval()
            self.device_ = ctx.device

        # Calibration on the held-out controls (all controls for zscore).
        use_cov = self.covariates
        if use_cov == "auto":
            use_cov = len(cal_idx) >= 10
        ages = [controls[i].age for i in cal_idx if controls[i].age is not None]
        age_ref = float(np.median(ages)) if ages else 50.0
        vlm = VoxelwiseLinearModel((n_channels,) + grid.shape, mask, covariates=bool(use_cov),
                                   age_ref=age_ref)
        from tqdm.auto import tqdm
        for i in tqdm(cal_idx, desc="calibrating", unit="subject", disable=not (progress and ctx.is_main)):
            sub = cached[i]
            data = np.load(sub.path, mmap_mode="r").astype(np.float32)
            std_data = standardise(data, sub.present, channel_mean, channel_std, mask)
            residual = self._residual(std_data, sub.present)
            vlm.add(residual, sub.present, sub.age, sub.sex)
        self.calibration_ = vlm.finalise()
        self.n_train_ = len(train_idx)
        self.n_calibration_ = len(cal_idx)
        self.covariates_ = bool(use_cov)
        self.train_summary_ = {
            "n_controls": len(controls), "n_train": int(len(train_idx)),
            "n_calibration": int(len(cal_idx)),
            "train_labels": sorted(controls[i].label for i in train_idx),
            "calibration_labels": sorted(controls[i].label for i in cal_idx),
            "age_range": [float(min(ages)), float(max(ages))] if ages else None,
        }
        if ctx.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank has read the shared cache before it goes
        if not keep_cache and (ctx.is_main or tmp_workdir):
            shutil.rmtree(cache_dir, ignore_errors=True)
        if tmp_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        return self

    def _choose_modalities(self, controls: Sequence[Subject]) -> list[str]:
        available = set.intersection(*(set(s.images) for s in controls))
        if self.modalities:
            wanted = list(self.modalities)
            unknown = [m for m in wanted if not any(m in s.images for s in controls)]
            if unknown:
                raise AnomalyInputError(
                    f"--modalities: no control has {', '.join(unknown)}; "
                    f"available: {', '.join(sorted(set().union(*(s.images for s in controls))))}")
            return wanted
        if not available:
            raise AnomalyInputError("no modality is shared by all controls; choose with --modalities")
        order = ["T1w", "T2w", "FLAIR", "pet"]
        return sorted(available, key=lambda m: (order.index(m) if m in order else len(order), m))

    def _residual(self, std_data: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Residual maps (standardised units), smoothed, zero where absent."""
        if self.method == "ae":
            recon = self.reconstruct(std_data, present)
            residual = std_data - recon
        else:
            residual = std_data.copy()
        for c in range(residual.shape[0]):
            if not present[c]:
                residual[c] = 0.0
            elif self.smooth_sigma > 0:
                residual[c] = smooth_in_mask(residual[c], self.mask_, self.smooth_sigma)
        return residual

    def reconstruct(self, std_data: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Autoencoder reconstruction of standardised images, shape (C, X, Y, Z)."""
        import torch

        from anomaly.normative.network import network_input

        self._check_fitted_network()
        device = getattr(self, "device_", torch.device("cpu"))
        net = self.network_.to(device)
        with torch.no_grad():
            x = torch.from_numpy(std_data[None]).to(device)
            p = torch.from_numpy(np.asarray(present, bool)[None]).to(device)
            recon = net(network_input(x, p))[0].cpu().numpy()
        return recon * self.mask_

    def _check_fitted_network(self) -> None:
        if getattr(self, "network_", None) is None:
            raise RuntimeError("this model has no network (method 'zscore' or not fitted)")

    # -------------------------------------------------------------------- score
    def score(self, images: Mapping[str, object] | Preprocessed, *, age: float | None = None,
              sex: str | None = None) -> SubjectScore:
        """Voxelwise z maps and the combined anomaly map of one subject.

        Parameters
        ----------
        images : mapping or Preprocessed
            Modality -> path/image, or an already preprocessed subject.
        age, sex : optional
            Covariates of the calibration model (population average if unknown).

        Returns
        -------
        SubjectScore
        """
        from anomaly.normative.calibration import standardise

        self._check_fitted()
        prep = images if isinstance(images, Preprocessed) else self.preprocess(images)
        std_data = standardise(prep.data, prep.present, self.channel_mean_, self.channel_std_, self.mask_)
        residual = self._residual(std_data, prep.present)
        z = self.calibration_.zmap(residual, age, sex) * self.mask_
        z[~prep.present] = np.nan
        if prep.valid is not None:
            # Brain voxels a present image does not cover have no z, not a deviation.
            for c in np.flatnonzero(prep.present):
                z[c][self.mask_ & ~prep.valid[c]] = np.nan
        anomaly = combine_anomaly(z, prep.present, self.modalities_, self.mask_)
        return SubjectScore(z=z, anomaly=anomaly, present=prep.present, modalities=list(self.modalities_),
                            data=prep.data, qc=prep.qc, grid=self.grid_)

    # ------------------------------------------------------------------ save/load
    def save(self, folder: str | Path) -> Path:
        """Write the model folder (metadata.json + safetensors weights)."""
        from anomaly.normative.modelio import save_model

        self._check_fitted()
        return save_model(self, Path(folder))

    @classmethod
    def load(cls, folder: str | Path, *, device: str = "cpu") -> "NormativeModel":
        """Load a model folder written by :meth:`save`, verifying hashes and versions."""
        from anomaly.normative.modelio import load_model

        return load_model(Path(folder), device=device)

    def describe(self) -> dict:
        """Short summary for reports."""
        self._check_fitted()
        return {"method": self.method, "modalities": list(self.modalities_),
                "resolution_mm": float(self.resolution), "grid_shape": list(self.grid_.shape),
                "n_train": int(self.n_train_), "n_calibration": int(self.n_calibration_),
                "covariates": bool(self.covariates_), "pet_reference": self.pet_reference}

    def __repr__(self) -> str:
        return f"NormativeModel(method={self.method!r}, resolution={self.resolution})"


def read_metadata(folder: str | Path) -> dict:
    """Return a model folder's metadata.json (no validation)."""
    return json.loads((Path(folder) / "metadata.json").read_text())
