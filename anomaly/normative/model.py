"""The normative model estimator: fit on healthy controls, map any subject's deviation.

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
network never saw (``val_fraction`` of them; the z-score model uses all controls). The
maps combine into one anomaly map as :mod:`anomaly.normative.maps` describes.

The estimator follows scikit-learn: ``__init__`` only stores its arguments, ``fit``
learns attributes ending in ``_``, :meth:`NormativeModel.transform` returns the maps.
Training, the distributed set-up, the work folder and the model folder live in their
own modules; the steps of ``fit`` are the methods below it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator

from anomaly.constants import LESION_SIGN, SPACE_LABEL
from anomaly.io import AnomalyInputError, AnomalyModelError, Subject
from anomaly.normative.calibration import CalibrationMaps, smooth_in_mask, standardise
from anomaly.normative.controls import (
    ControlSplit,
    calibration_size,
    choose_modalities,
    select_controls,
    split_controls,
)
from anomaly.normative.maps import SubjectScore, combine_anomaly
from anomaly.normative.modelio import METADATA, WEIGHTS, NormativeFiles, read_metadata
from anomaly.preprocess import (
    Grid,
    Preprocessed,
    make_grid,
    preprocess_subject,
    template_images,
)

if TYPE_CHECKING:
    from anomaly.normative.data import CachedSubject
    from anomaly.normative.distributed import DistributedContext

__all__ = ["LESION_SIGN", "METHODS", "NormativeModel", "SubjectScore", "calibration_size",
           "combine_anomaly", "read_metadata"]

METHODS = ("ae", "zscore")
#: Atlas region patterns used as PET reference regions (Neuromorphometrics names).
PET_REFERENCE_PATTERNS = {"cerebellum": "Cerebell", "brainstem": "Brain_Stem"}


class NormativeModel(BaseEstimator):
    """Normative model of healthy brains (a scikit-learn estimator).

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

    Attributes
    ----------
    modalities_ : list of str
    grid_ : Grid
    mask_ : ndarray of bool
        Template brain mask on the grid.
    channel_mean_, channel_std_ : ndarray, shape (C,)
        Standardisation learnt on the training controls.
    control_mean_ : ndarray, shape (C, X, Y, Z)
        Mean normalised image of the training controls.
    network_ : torch.nn.Module or None
        The autoencoder (method "ae").
    history_ : list of dict
        Per-epoch training log.
    calibration_ : CalibrationMaps
    covariates_ : bool
    n_train_, n_calibration_ : int
    train_summary_ : dict
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

    # ------------------------------------------------------------------ checks
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

    def _check_fitted_network(self) -> None:
        if getattr(self, "network_", None) is None:
            raise RuntimeError("this model has no network (method 'zscore' or not fitted)")

    # -------------------------------------------------------------- preprocess
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
        if not hasattr(self, "_ref_masks"):  # a cache, not a fitted attribute
            self._ref_masks = self._reference_masks(grid)
        return preprocess_subject(images, grid, modalities, pet_reference=self.pet_reference,
                                  reference_masks=self._ref_masks)

    # --------------------------------------------------------------------- fit
    def fit(self, subjects: Sequence[Subject], *, workdir: str | Path | None = None,
            resume: bool = False, progress: bool = True, num_workers: int = 0,
            keep_cache: bool = False) -> NormativeModel:
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
        from anomaly.normative.distributed import init_distributed
        from anomaly.normative.workdir import fit_workdir

        self._check_params()
        controls = select_controls(subjects)
        self.modalities_ = choose_modalities(controls, self.modalities)
        self.grid_ = make_grid(self.resolution)
        self.mask_ = template_images(self.grid_)["mask"] > 0.5
        ctx = init_distributed(self.device)
        with fit_workdir(workdir, ctx, keep_cache=keep_cache) as work:
            split = split_controls(len(controls), self.val_fraction, method=self.method, seed=self.seed)
            cached, mean, std = self._cache_controls(controls, split, work.cache,
                                                     progress=progress and ctx.is_main)
            self._train_network(cached, split, mean, std, work.path, ctx, resume=resume,
                                progress=progress, num_workers=num_workers)
            self._calibrate(cached, split, mean, std, progress=progress and ctx.is_main)
            self._summarise(controls, split)
        return self

    def _cache_controls(self, controls: Sequence[Subject], split: ControlSplit, cache_dir: Path, *,
                        progress: bool) -> tuple[list[CachedSubject], np.ndarray, np.ndarray]:
        """Preprocess every control once into the cache and learn the standardisation.

        Returns the cached subjects and the float64 channel mean and SD (the fitted
        attributes keep float32 copies).
        """
        from anomaly.normative.data import ChannelStatistics, build_cache

        stats = ChannelStatistics(self.modalities_, self.mask_, {controls[i].label for i in split.train})
        settings = {"modalities": tuple(self.modalities_), "resolution": float(self.resolution),
                    "pet_reference": self.pet_reference, "grid": self.grid_.shape}
        # Every rank builds (or reuses) the cache: each needs the arrays it trains on.
        cached = build_cache(controls, cache_dir, settings, lambda s: self.preprocess(s.images),
                             on_subject=stats.add, progress=progress)
        mean, std, self.control_mean_ = stats.finalise()
        self.channel_mean_ = mean.astype(np.float32)
        self.channel_std_ = std.astype(np.float32)
        return cached, mean, std

    def _train_network(self, cached: Sequence[CachedSubject], split: ControlSplit, mean: np.ndarray,
                       std: np.ndarray, workdir: Path, ctx: DistributedContext, *, resume: bool,
                       progress: bool, num_workers: int) -> None:
        """Train the autoencoder on the training controls (method "ae" only)."""
        self.network_ = None
        self.history_ = []
        if self.method != "ae":
            return
        import torch

        from anomaly.normative import trainer
        from anomaly.normative.data import CachedDataset
        from anomaly.normative.network import build_network

        torch.manual_seed(self.seed)
        network = build_network(len(self.modalities_), self.channels)
        train_set = CachedDataset([cached[i] for i in split.train], mean, std, self.mask_)
        val_set = CachedDataset([cached[i] for i in split.calibration], mean, std, self.mask_)
        settings = trainer.TrainSettings(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            noise_scale=self.noise_scale, noise_coarseness=self.noise_coarseness,
            modality_dropout=self.modality_dropout, seed=self.seed)
        self.history_ = trainer.train_autoencoder(
            network, train_set, val_set, self.mask_, settings, workdir, ctx=ctx, resume=resume,
            progress=progress, num_workers=num_workers)
        self.network_ = network.cpu().eval()
        self.device_ = ctx.device

    def _calibrate(self, cached: Sequence[CachedSubject], split: ControlSplit, mean: np.ndarray,
                   std: np.ndarray, *, progress: bool) -> None:
        """Fit the voxelwise calibration on the held-out controls (all for zscore)."""
        from tqdm.auto import tqdm

        from anomaly.normative.calibration import VoxelwiseLinearModel

        cal = [cached[i] for i in split.calibration]
        use_cov = len(cal) >= 10 if self.covariates == "auto" else self.covariates
        ages = [s.age for s in cal if s.age is not None]
        vlm = VoxelwiseLinearModel((len(self.modalities_),) + self.grid_.shape, self.mask_,
                                   covariates=bool(use_cov),
                                   age_ref=float(np.median(ages)) if ages else 50.0)
        for sub in tqdm(cal, desc="calibrating", unit="subject", disable=not progress):
            data = np.load(sub.path, mmap_mode="r").astype(np.float32)
            std_data = standardise(data, sub.present, mean, std, self.mask_)
            vlm.add(self._residual(std_data, sub.present), sub.present, sub.age, sub.sex)
        self.calibration_ = vlm.finalise()
        self.covariates_ = bool(use_cov)

    def _summarise(self, controls: Sequence[Subject], split: ControlSplit) -> None:
        """Record who trained and who calibrated the model."""
        ages = [controls[i].age for i in split.calibration if controls[i].age is not None]
        self.n_train_ = len(split.train)
        self.n_calibration_ = len(split.calibration)
        self.train_summary_ = {
            "n_controls": len(controls), "n_train": len(split.train),
            "n_calibration": len(split.calibration),
            "train_labels": sorted(controls[i].label for i in split.train),
            "calibration_labels": sorted(controls[i].label for i in split.calibration),
            "age_range": [float(min(ages)), float(max(ages))] if ages else None,
        }

    # --------------------------------------------------------------- residuals
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

    # --------------------------------------------------------------- transform
    def transform(self, images: Mapping[str, object] | Preprocessed, *, age: float | None = None,
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

    def score(self, images: Mapping[str, object] | Preprocessed, *, age: float | None = None,
              sex: str | None = None) -> SubjectScore:
        """Deprecated alias of :meth:`transform` (scikit-learn's ``score`` is a number)."""
        warnings.warn("NormativeModel.score() is deprecated and will be removed; it returns maps, "
                      "use NormativeModel.transform()", FutureWarning, stacklevel=2)
        return self.transform(images, age=age, sex=sex)

    # --------------------------------------------------------------- save/load
    def save(self, folder: str | Path) -> Path:
        """Write the model folder (metadata.json + safetensors files), atomically."""
        from anomaly.normative.modelio import write_normative_folder

        self._check_fitted()
        return write_normative_folder(Path(folder), self._metadata(), self._calibration_arrays(),
                                      self._weights())

    @classmethod
    def load(cls, folder: str | Path, *, device: str = "cpu") -> NormativeModel:
        """Load a model folder written by :meth:`save`, verifying hashes and versions."""
        from anomaly.normative.modelio import read_normative_folder

        files = read_normative_folder(Path(folder))
        try:
            model = cls(**{**files.metadata["training"], "device": device})
        except (KeyError, TypeError) as exc:
            raise AnomalyModelError(f"{files.path / METADATA}: inconsistent model settings ({exc})") from None
        model._set_fitted_state(files, device=device)
        return model

    def _metadata(self) -> dict[str, Any]:
        """What ``metadata.json`` records of this fitted model."""
        params = self.get_params()
        params["modalities"] = list(self.modalities_)
        params["channels"] = list(params["channels"])
        cal = self.calibration_
        return {
            "method": self.method,
            "modalities": list(self.modalities_),
            "grid": {**self.grid_.to_dict(), "resolution": float(self.grid_.resolution),
                     "space": SPACE_LABEL},
            "normalisation": {"mri": "robust z (median, IQR/1.349) in the template brain mask",
                              "pet": f"SUVR, reference {self.pet_reference}",
                              "channel_mean": self.channel_mean_.tolist(),
                              "channel_std": self.channel_std_.tolist()},
            "calibration": {"covariates": ["age", "sex"] if cal.covariates else [],
                            "age_ref": cal.age_ref, "n_subjects": cal.n_subjects.tolist(),
                            "smooth_sigma_voxels": self.smooth_sigma},
            "training": params,
            "history": self.history_,
            "data": self.train_summary_,
        }

    def _calibration_arrays(self) -> dict[str, np.ndarray]:
        cal = self.calibration_
        return {"beta": cal.beta, "sd": cal.sd, "n_subjects": cal.n_subjects.astype(np.int64),
                "mask": self.mask_.astype(np.uint8), "channel_mean": self.channel_mean_,
                "channel_std": self.channel_std_, "control_mean": self.control_mean_}

    def _weights(self) -> dict | None:
        if self.network_ is None:
            return None
        return {k: v.detach().cpu().contiguous() for k, v in self.network_.state_dict().items()}

    def _set_fitted_state(self, files: NormativeFiles, *, device: str = "cpu") -> None:
        """Restore every fitted attribute from a model folder's content."""
        meta, arrays = files.metadata, files.calibration
        try:
            self.grid_ = Grid(shape=tuple(meta["grid"]["shape"]), affine=np.asarray(meta["grid"]["affine"]),
                              resolution=float(meta["grid"]["resolution"]))
            self.modalities_ = list(meta["modalities"])
            self.mask_ = arrays["mask"].astype(bool)
            self.channel_mean_ = arrays["channel_mean"]
            self.channel_std_ = arrays["channel_std"]
            self.control_mean_ = arrays["control_mean"]
            cal = meta["calibration"]
            self.calibration_ = CalibrationMaps(beta=arrays["beta"], sd=arrays["sd"],
                                                n_subjects=arrays["n_subjects"], age_ref=float(cal["age_ref"]),
                                                covariates=bool(cal["covariates"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise AnomalyModelError(f"{files.path / METADATA}: inconsistent model folder ({exc})") from None
        self.covariates_ = bool(cal["covariates"])
        self.history_ = meta.get("history", [])
        self.train_summary_ = meta.get("data", {})
        self.n_train_ = self.train_summary_.get("n_train", 0)
        self.n_calibration_ = self.train_summary_.get("n_calibration", 0)
        self.network_ = None
        if self.method == "ae":
            self._set_network(files, device)

    def _set_network(self, files: NormativeFiles, device: str) -> None:
        from anomaly.io import resolve_device
        from anomaly.normative.network import build_network

        network = build_network(len(self.modalities_), self.channels)
        try:
            network.load_state_dict(files.weights)
        except (RuntimeError, TypeError):
            raise AnomalyModelError(
                f"{files.path / WEIGHTS}: weights do not fit the network described in metadata.json") from None
        self.device_ = resolve_device(device)
        self.network_ = network.eval().to(self.device_)

    def describe(self) -> dict:
        """Short summary for reports."""
        self._check_fitted()
        return {"method": self.method, "modalities": list(self.modalities_),
                "resolution_mm": float(self.resolution), "grid_shape": list(self.grid_.shape),
                "n_train": int(self.n_train_), "n_calibration": int(self.n_calibration_),
                "covariates": bool(self.covariates_), "pet_reference": self.pet_reference}
