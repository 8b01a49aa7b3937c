"""The normative model estimator: fit on healthy controls, map any subject's deviation.

Methods share one API and one calibration:

``ae``
    A MONAI 3D U-Net trained as a denoising autoencoder with coarse noise on the
    healthy controls (:mod:`anomaly.normative.network`). The residual of a subject is
    its standardised image minus the network's reconstruction.
``zscore``
    The classical clinical approach (SPM single-subject analysis, 3D-SSP): the residual
    is the standardised image itself, so the calibrated z map is the voxelwise
    deviation from the age- and sex-adjusted control mean.
``hybrid`` (default)
    Both: a model with a network also calibrates the images on every control, and the
    hybrid z map is the per-voxel mean of the two, except for a peak-searched PET,
    taken from the voxelwise model alone (:mod:`anomaly.normative.hybrid`).
``auto``
    The hybrid model, switching to ae or zscore only where that method beats hybrid in
    every held-out control of the self-check (:mod:`anomaly.normative.selfcheck`:
    injected regional hypometabolism and lesions; run after every fit and stored in the
    model).

Calibration (:mod:`anomaly.normative.calibration`) turns residuals into signed z maps
per modality with a voxelwise linear model of age and sex, fitted on controls the
network never saw (``val_fraction`` of them; the z-score model uses all controls), or,
with ``cross_fit`` K >= 2, on every control through the one of K networks that did not
see it (:mod:`anomaly.normative.crossfit`). The
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

from anomaly.constants import (
    COMBINE_RULES,
    DEFAULT_COMBINE_RULE,
    LESION_DIRECTIONS,
    LESION_SIGN,
    PET,
    SPACE_LABEL,
)
from anomaly.io import AnomalyInputError, AnomalyModelError, Subject
from anomaly.normative.calibration import (
    COVARIATE_MIN_SUBJECTS,
    PET_PEAK_MM,
    CalibrationMaps,
    peak_search_in_mask,
    smooth_in_mask,
    standardise,
)
from anomaly.normative.controls import (
    ControlSplit,
    calibration_size,
    check_cross_fit,
    choose_modalities,
    select_controls,
    split_controls,
)
from anomaly.normative.hybrid import NETWORK_METHODS, hybrid_z
from anomaly.normative.maps import (
    MAP_RIM_MM,
    MAP_SMOOTHING_MM,
    MEDIAN_FILTER_MM,
    SubjectScore,
    combine_anomaly,
    median_size_for_mm,
    postprocess_anomaly,
)
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

METHODS = ("ae", "zscore", "hybrid", "auto")
#: Settings that model folders written before they existed were fitted with: a folder
#: whose metadata lacks one loads with this value, not with today's default.
_LEGACY_PARAMS = {"cross_fit": 1, "median_filter": 0, "erode_mask": 0, "pet_peak_search": 0,
                  "modality_rule": "max", "map_smoothing": 0.0, "map_rim": 0.0}
#: Default training length (``epochs=None``, :meth:`NormativeModel.training_epochs`): 20
#: epochs, but at most 400 optimisation steps per network. A step (two 2 mm volumes of
#: three modalities) takes 0.6-0.9 s on two CPU cores, so that two cross-fitted networks
#: stay within issue 12's 15 min whatever the cohort size (100 controls took 16 min with
#: 20 epochs of 25 steps).
DEFAULT_EPOCHS = 20
DEFAULT_MAX_STEPS = 400
#: Atlas region patterns used as PET reference regions (Neuromorphometrics names).
PET_REFERENCE_PATTERNS = {"cerebellum": "Cerebell", "brainstem": "Brain_Stem"}


class NormativeModel(BaseEstimator):
    """Normative model of healthy brains (a scikit-learn estimator).

    Parameters
    ----------
    method : {"hybrid", "ae", "zscore", "auto"}
        Per-voxel combination of the autoencoder's and the voxelwise model's z maps
        (default, :mod:`anomaly.normative.hybrid`; the best method on the realistic
        detection benchmark), denoising autoencoder alone, classical voxelwise z-score
        model alone, or ``auto``: fit the
        hybrid model and keep it unless ae or zscore beats it in every held-out control
        of the self-check (:mod:`anomaly.normative.selfcheck`: regional hypometabolism
        and lesions injected into held-out controls).
    modalities : sequence of str, optional
        BIDS suffixes to model (e.g. ``("T1w", "FLAIR", "pet")``). Default: every
        modality that all training controls have.
    resolution : float
        Voxel size of the model grid in mm (2, 3 or 4 typical).
    epochs : int, optional
        Training epochs of each network. Default: :data:`DEFAULT_EPOCHS` (20), or fewer
        on a large cohort, so that a network takes at most :data:`DEFAULT_MAX_STEPS`
        (400) optimisation steps (:meth:`training_epochs`).
    batch_size, lr : int, float
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
        Model age and sex in the calibration; "auto" does so when at least
        :data:`~anomaly.normative.calibration.COVARIATE_MIN_SUBJECTS` (40)
        calibration subjects are available (fewer: the coefficients cost more than
        the age effect they remove).
    smooth_sigma : float
        Gaussian sigma (voxels) applied to residual maps before calibration, in both
        methods, so that z maps describe lesion-sized deviations rather than voxel noise.
    pet_reference : {"cerebellum", "brainstem", "global"}
        PET SUVR reference region.
    seed : int
    device : {"auto", "cpu", "cuda"}
    augment : float
        Strength of the healthy-variation augmentation of the autoencoder's training
        batches (:func:`anomaly.normative.network.augment_batch`: smooth warps, bias
        field, contrast); 0 (default) trains without it.
    lesion_directions : mapping of str to {"lower", "higher", "both"}, optional
        Direction a lesion pushes each modality, as the user declares it; overrides
        :func:`anomaly.constants.lesion_sign` (unknown modalities: both, i.e. |z|) in
        the combined anomaly map. Stored in the model metadata.
    median_filter : int or None
        Window (voxels) of the separable median filter applied to the combined anomaly
        map at scoring (:func:`~anomaly.normative.maps.postprocess_anomaly`); 0: none.
        None (default): the odd number of voxels closest to
        :data:`~anomaly.normative.maps.MEDIAN_FILTER_MM` (10 mm: 5 voxels at 2 mm, 3 at
        3-4 mm). On the realistic detection benchmark it raised the default's focal
        AUPRC by 0.02-0.03 at 2 and 4 mm and cost nothing on the original simulator
        (README, Benchmarks). Only the combined anomaly map changes, not the z maps.
    map_smoothing : float or None
        Gaussian sigma (voxels) of the smoothing of the combined anomaly map after the
        median filter (:func:`~anomaly.normative.maps.postprocess_anomaly`; zero outside
        the brain, so that its edge is lowered too); 0: none. None (default):
        :data:`~anomaly.normative.maps.MAP_SMOOTHING_MM`, i.e. none: with the rim
        (``map_rim``) it lowered the focal AUPRC on 9 of 11 development cohorts of the
        realistic detection benchmark and the best Dice on all (README, Benchmarks).
    map_rim : float or None
        Width (voxels) of the rim outside the brain mask over which the combined anomaly
        map is extended at scoring, each rim voxel taking its nearest brain voxel's value
        (:func:`~anomaly.normative.maps.extend_into_rim`): a registered patient's brain
        still reaches a few mm beyond the template's mask, and lesions there would
        otherwise score 0. 0: none (the map is 0 outside the mask). None (default):
        :data:`~anomaly.normative.maps.MAP_RIM_MM` (8 mm: 4 voxels at 2 mm, 2 at 4 mm).
        On the realistic detection benchmark, where 7-20 % of the focal lesion voxels
        lie outside the template's mask, it raised the default's focal AUPRC by
        0.04-0.14 on eleven development cohorts and 0.05-0.07 on seven fresh ones
        (README, Benchmarks). Only the combined anomaly map changes: z maps and
        regional tables stay inside the mask.
    cross_fit : int
        1: one network, trained on the controls less ``val_fraction`` of them, whose
        residuals are calibrated on those held out. K >= 2 (default 2): cross-fitted
        calibration (:mod:`anomaly.normative.crossfit`): K networks, network k trained
        on every control outside fold k; every control's residual comes from the
        network that did not see it, so the autoencoder's calibration rests on all
        controls. A new subject's autoencoder z map is the mean of the K networks' z
        maps, rescaled to their spread (:func:`~anomaly.normative.crossfit.ensemble_z`).
        On the realistic detection benchmark K=2 raised the autoencoder's focal AUPRC
        from 0.69 to 0.79 and the hybrid's from 0.78 to 0.80 (4 mm, 30 controls), for
        1.4 times the training and one forward pass per network at scoring.
    erode_mask : int
        Voxels at the brain mask's edge set to 0 in the combined anomaly map (0, the
        default: none). It helped at 4 mm (misregistered outlines are a voxel wide
        there) but not at 2 mm, and cost 0.03-0.06 focal AUPRC on the original
        simulator (README, Benchmarks).
    pet_peak_search : int or None
        Edge (voxels) of the PET peak search of the voxelwise (``zscore``) model:
        before its calibration and at scoring, each PET voxel takes the highest uptake
        in a cube around it (:func:`~anomaly.normative.calibration.peak_search_in_mask`,
        after 3D-SSP), so that residual misregistration of the cortical ribbon does not
        inflate the controls' SD. 0: none. None (default): the odd number of voxels
        closest to :data:`~anomaly.normative.calibration.PET_PEAK_MM` (12 mm: 7 voxels
        at 2 mm, 5 at 3 mm, 3 at 4 mm), for every method. The autoencoder's residual is
        not searched; with a search, the hybrid takes its PET channel from the voxelwise
        model alone (:func:`~anomaly.normative.hybrid.hybrid_z`). Scored over each
        patient's own brain, it raised the voxelwise model's focal AUPRC on the realistic
        detection benchmark from 0.77 to 0.92 in-domain (README, Benchmarks).
    modality_rule : {"pet-led", "max", "stouffer", "mean"}
        How the modalities' z maps combine into the anomaly map at scoring
        (:func:`~anomaly.normative.maps.combine_anomaly`). "pet-led" (default): where
        PET is present, its deviation, unless an MRI deviation exceeds it by more than
        :data:`~anomaly.constants.MRI_MARGIN_Z`; elsewhere the largest MRI
        deviation. On every realistic detection cohort measured it raised the default's
        focal AUPRC over "max" by 0.005-0.18 (README, Benchmarks); choose "max" when
        lesions may show in MRI alone. Only the combined anomaly map changes, not the
        z maps. Model folders written before it existed keep "max".

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
        The autoencoder (method "ae"; the first of :attr:`networks_`).
    networks_ : list of torch.nn.Module
        The ``cross_fit`` networks (empty without a network).
    history_ : list of dict
        Per-epoch training log.
    calibration_ : CalibrationMaps
    covariates_ : bool
    n_train_, n_calibration_ : int
    train_summary_ : dict
    atlas_coverage_ : dict
        Per shipped atlas, the regions kept and lost on the model grid
        (:func:`shipped_atlas_coverage`); recorded at fit, shown in reports.
    pet_levels_ : anomaly.atlas.petlevels.PETNorms or None
        The controls' PET log ratios per region and cortical levels
        (:mod:`anomaly.normative.regional`); None without PET or for a model fitted
        before they were recorded.
    pet_peak_size_ : int
        Edge (voxels) of the PET peak search the voxelwise calibration was fitted with
        (:meth:`pet_peak_size` at fit; 0: none).
    """

    def __init__(self, method: str = "hybrid", *, modalities: Sequence[str] | None = None,
                 resolution: float = 2.0, epochs: int | None = None, batch_size: int = 2, lr: float = 2e-3,
                 channels: Sequence[int] = (16, 32, 64, 128), noise_scale: float = 0.3,
                 noise_coarseness: int = 8, modality_dropout: float = 0.2,
                 val_fraction: float = 0.2, covariates: bool | str = "auto",
                 smooth_sigma: float = 1.0, pet_reference: str = "cerebellum",
                 seed: int = 0, device: str = "auto", augment: float = 0.0,
                 lesion_directions: Mapping[str, str] | None = None, median_filter: int | None = None,
                 erode_mask: int = 0, cross_fit: int = 2, pet_peak_search: int | None = None,
                 modality_rule: str = DEFAULT_COMBINE_RULE, map_smoothing: float | None = None,
                 map_rim: float | None = None) -> None:
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
        self.augment = augment
        self.lesion_directions = lesion_directions
        self.median_filter = median_filter
        self.erode_mask = erode_mask
        self.cross_fit = cross_fit
        self.pet_peak_search = pet_peak_search
        self.modality_rule = modality_rule
        self.map_smoothing = map_smoothing
        self.map_rim = map_rim

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        if self.lesion_directions is not None and (
                not isinstance(self.lesion_directions, Mapping)
                or any(d not in LESION_DIRECTIONS for d in self.lesion_directions.values())):
            raise AnomalyInputError("lesion_directions: expected a mapping of modality to lower, higher or "
                                    f"both; got {self.lesion_directions!r}")
        if self.method not in METHODS:
            raise AnomalyInputError(f"method: expected one of {', '.join(METHODS)}; got {self.method!r}")
        if self.modality_rule not in COMBINE_RULES:
            raise AnomalyInputError(
                f"modality_rule: expected one of {', '.join(COMBINE_RULES)}; got {self.modality_rule!r}")
        if self.pet_reference not in (*PET_REFERENCE_PATTERNS, "global"):
            raise AnomalyInputError(
                f"pet_reference: expected cerebellum, brainstem or global; got {self.pet_reference!r}")
        if not 0 < self.val_fraction < 1:
            raise AnomalyInputError(f"val_fraction: expected a number in (0, 1); got {self.val_fraction}")
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1:
            raise AnomalyInputError("epochs and batch_size must be at least 1")
        for name in ("median_filter", "erode_mask", "pet_peak_search"):
            value = getattr(self, name)
            if value is None and name != "erode_mask":
                continue
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise AnomalyInputError(f"{name}: expected a whole number >= 0; got {value!r}")
        for name in ("map_smoothing", "map_rim"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
                                      or not 0 <= value < np.inf):
                raise AnomalyInputError(f"{name}: expected a number >= 0 (voxels); got {value!r}")
        check_cross_fit(self.cross_fit)

    def _check_fitted(self) -> None:
        if not hasattr(self, "calibration_"):
            raise RuntimeError("this NormativeModel is not fitted yet; call fit() or load()")

    def _check_fitted_network(self) -> None:
        if getattr(self, "network_", None) is None:  # also: method "zscore"
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
            keep_cache: bool = False, drop_qc_outliers: bool = False) -> NormativeModel:
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
        drop_qc_outliers : bool
            Leave out the controls that quality control finds to be clear outliers
            (:func:`anomaly.qc.screen_controls`) instead of refusing to fit.

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
        self.pet_peak_size_ = self.pet_peak_size()
        ctx = init_distributed(self.device)
        with fit_workdir(workdir, ctx, keep_cache=keep_cache) as work:
            split = split_controls(len(controls), self.val_fraction, method=self.method, seed=self.seed,
                                   cross_fit=self.cross_fit)
            cached, mean, std = self._cache_controls(controls, split, work.cache,
                                                     progress=progress and ctx.is_main)
            controls, split, cached, mean, std = self._screen_controls(
                controls, split, cached, (mean, std), work.cache, drop=drop_qc_outliers,
                progress=progress and ctx.is_main)
            self._train_network(cached, split, mean, std, work.path, ctx, resume=resume,
                                progress=progress, num_workers=num_workers)
            self._calibrate(cached, split, mean, std, progress=progress and ctx.is_main)
            self._summarise(controls, split)
            self.pet_levels_ = self._fit_pet_levels(cached)
            self._run_self_check(cached, split, mean, std)
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

    def _screen_controls(self, controls: Sequence[Subject], split: ControlSplit, cached: list[CachedSubject],
                         stats: tuple[np.ndarray, np.ndarray], cache_dir: Path, *, drop: bool, progress: bool):
        """Leave-one-out QC of the controls (:func:`anomaly.qc.screen_controls`).

        A clear outlier raises AnomalyInputError naming it or, with ``drop``, is left
        out (split and standardisation redone from the cache). Sets
        :attr:`qc_reference_` (the controls' QC distribution) and :attr:`qc_dropped_`.
        Returns the (possibly reduced) controls, split, cached subjects, mean and SD.
        """
        from anomaly.qc import screen_controls

        def screen(subjects: Sequence[CachedSubject]):
            loaders = {s.label: (lambda s=s: (np.load(s.path, mmap_mode="r").astype(np.float32), s.present))
                       for s in subjects}
            return screen_controls(loaders, self.modalities_, self.grid_, {s.label: s.age for s in subjects})

        result = screen(cached)
        self.qc_dropped_ = dict(result.outliers)
        self.qc_reference_ = result.reference
        if not result.outliers:
            return controls, split, cached, *stats
        if not drop:
            raise AnomalyInputError(f"{next(iter(result.outliers.values()))} (fit refused: remove the control "
                                    f"or pass --drop-qc-outliers; {len(result.outliers)} outlier(s))")
        controls = [c for c in controls if c.label not in result.outliers]
        split = split_controls(len(controls), self.val_fraction, method=self.method, seed=self.seed,
                               cross_fit=self.cross_fit)
        cached, mean, std = self._cache_controls(controls, split, cache_dir, progress=progress)
        self.qc_reference_ = screen(cached).reference
        return controls, split, cached, mean, std

    def quality_check(self, prep: Preprocessed, *, age: float | None = None, sex: str | None = None,
                      force: bool = False, where: str = "age/sex"):
        """QC of one preprocessed subject against this model's controls.

        Parameters
        ----------
        prep : Preprocessed
            :meth:`preprocess` output.
        age, sex : optional
            Covariates (an impossible value raises AnomalyInputError).
        force : bool
            Record that refusals are overridden.
        where : str
            What a covariate error names.

        Returns
        -------
        anomaly.qc.SubjectQC
        """
        from dataclasses import replace

        from anomaly.qc import assess_subject

        self._check_fitted()
        if prep.grid is None:  # e.g. rebuilt from the preprocessing cache
            prep = replace(prep, grid=self.grid_)
        reference = getattr(self, "qc_reference_", None)
        ages = (getattr(self, "train_summary_", None) or {}).get("age_range")
        if reference is not None and ages:  # the age model was fitted on the calibration controls
            reference = replace(reference, age_range=(float(ages[0]), float(ages[1])))
        return assess_subject(prep, reference, self.control_mean_,
                              pet_reference=self.pet_reference, age=age, sex=sex, force=force, where=where,
                              age_modelled=bool(getattr(self, "covariates_", True)))

    def _train_network(self, cached: Sequence[CachedSubject], split: ControlSplit, mean: np.ndarray,
                       std: np.ndarray, workdir: Path, ctx: DistributedContext, *, resume: bool,
                       progress: bool, num_workers: int) -> None:
        """Train the autoencoder(s): one, or one per fold when cross-fitting (network methods only).

        Network k is seeded with ``seed + k`` (initialisation, noise, data order), so
        the first network of a cross-fitted model starts as a single one would.
        """
        self.network_ = None
        self.networks_ = []
        self.history_ = []
        if self.method not in NETWORK_METHODS:
            return
        import torch

        from anomaly.normative import trainer
        from anomaly.normative.crossfit import network_runs
        from anomaly.normative.data import CachedDataset
        from anomaly.normative.network import build_network

        for run in network_runs(split):
            torch.manual_seed(self.seed + run.index)
            network = build_network(len(self.modalities_), self.channels)
            train_set = CachedDataset([cached[i] for i in run.train], mean, std, self.mask_)
            val_set = CachedDataset([cached[i] for i in run.calibration], mean, std, self.mask_)
            settings = trainer.TrainSettings(
                epochs=self.training_epochs(len(run.train), ctx.world_size), batch_size=self.batch_size, lr=self.lr,
                noise_scale=self.noise_scale, noise_coarseness=self.noise_coarseness,
                modality_dropout=self.modality_dropout, seed=self.seed + run.index, augment=self.augment)
            history = trainer.train_autoencoder(
                network, train_set, val_set, self.mask_, settings, workdir, ctx=ctx, resume=resume,
                progress=progress, num_workers=num_workers, tag=run.tag, label=run.label)
            self.history_ += [dict(row, network=run.index + 1) if split.folds else row for row in history]
            self.networks_.append(network.cpu().eval())
        self.network_ = self.networks_[0]
        self.device_ = ctx.device

    def _calibrate(self, cached: Sequence[CachedSubject], split: ControlSplit, mean: np.ndarray,
                   std: np.ndarray, *, progress: bool) -> None:
        """Fit the voxelwise calibration on the held-out controls (all for zscore).

        Cross-fitted: every control is held out by one network, whose residual it adds.
        """
        from tqdm.auto import tqdm

        from anomaly.normative.calibration import VoxelwiseLinearModel

        cal = [cached[i] for i in split.calibration]
        use_cov = len(cal) >= COVARIATE_MIN_SUBJECTS if self.covariates == "auto" else self.covariates
        ages = [s.age for s in cal if s.age is not None]
        shape = (len(self.modalities_),) + self.grid_.shape
        age_ref = float(np.median(ages)) if ages else 50.0
        vlm = VoxelwiseLinearModel(shape, self.mask_, covariates=bool(use_cov), age_ref=age_ref)
        # A network model also keeps the voxelwise calibration on every control (its
        # "zscore" component, for the hybrid map and the self-check).
        voxel = None
        if self.network_ is not None:
            voxel = VoxelwiseLinearModel(shape, self.mask_, covariates=len(cached) >= COVARIATE_MIN_SUBJECTS
                                         if self.covariates == "auto" else bool(self.covariates),
                                         age_ref=age_ref)
        in_cal = {int(i) for i in split.calibration}
        network_of = split.network_of()  # empty for a single split: the one network
        for i, sub in enumerate(tqdm(cached, desc="calibrating", unit="subject", disable=not progress)):
            if i not in in_cal and voxel is None:
                continue
            data = np.load(sub.path, mmap_mode="r").astype(np.float32)
            std_data = standardise(data, sub.present, mean, std, self.mask_)
            if i in in_cal:
                vlm.add(self._residual(std_data, sub.present, network=network_of.get(i)), sub.present,
                        sub.age, sub.sex)
            if voxel is not None:
                voxel.add(self._residual(std_data, sub.present, kind="zscore"), sub.present, sub.age, sub.sex)
        self.calibration_ = vlm.finalise()
        self.voxel_calibration_ = voxel.finalise() if voxel is not None else None
        self._calibration_sums = {"ae" if voxel is not None else "zscore": vlm, "zscore": voxel or vlm}
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
        if split.folds:  # cross-fitted: who each network did not see
            self.train_summary_["cross_fit_folds"] = [sorted(controls[i].label for i in f) for f in split.folds]
        self.atlas_coverage_ = shipped_atlas_coverage(self.grid_)

    def _fit_pet_levels(self, cached: Sequence[CachedSubject]):
        """The controls' PET log ratios and cortical levels (:mod:`anomaly.normative.regional`)."""
        if PET not in self.modalities_:
            return None
        from anomaly.normative.regional import fit_pet_norms

        c = self.modalities_.index(PET)
        loaders = [lambda s=s: np.load(s.path, mmap_mode="r")[c].astype(np.float32) if s.present[c] else None
                   for s in cached]
        return fit_pet_norms(loaders, self.grid_, self.mask_, self.control_mean_[c])

    # --------------------------------------------------------------- residuals
    def _residual(self, std_data: np.ndarray, present: np.ndarray, kind: str | None = None, *,
                  network: int | None = None) -> np.ndarray:
        """Residual maps (standardised units), smoothed, zero where absent.

        ``kind``: "ae" (image minus reconstruction) or "zscore" (the image, its PET
        channel peak-searched over ``pet_peak_size_`` voxels); default: "ae" for a model with
        a network. ``network``: reconstruct with that network
        only (a cross-fitted control's out-of-fold residual); default: all of them.
        """
        kind = kind or ("zscore" if getattr(self, "network_", None) is None else "ae")
        if kind == "ae":
            recon = self.reconstruct(std_data, present, network=network)
            residual = std_data - recon
        else:
            residual = std_data.copy()
        peak = self.pet_peak_size_ if kind == "zscore" else 0
        for c in range(residual.shape[0]):
            if not present[c]:
                residual[c] = 0.0
                continue
            if peak > 1 and self.modalities_[c] == PET:
                residual[c] = peak_search_in_mask(residual[c], self.mask_, peak)
            if self.smooth_sigma > 0:
                residual[c] = smooth_in_mask(residual[c], self.mask_, self.smooth_sigma)
        return residual

    def component_z(self, std_data: np.ndarray, present: np.ndarray, age: float | None = None,
                    sex: str | None = None, *, methods: Sequence[str] | None = None,
                    calibrations: Mapping[str, CalibrationMaps] | None = None) -> dict[str, np.ndarray]:
        """Masked z maps of one standardised subject for each method this model can give.

        Parameters
        ----------
        std_data : ndarray, shape (C, X, Y, Z)
            Standardised images (:func:`~anomaly.normative.calibration.standardise`).
        present : ndarray of bool, shape (C,)
        age, sex : optional
            Covariates of the calibration.
        methods : sequence of str, optional
            Among "ae", "zscore", "hybrid"; default: all this model has.
        calibrations : mapping, optional
            Replacement calibration per component ("ae", "zscore"), e.g. leave-one-out
            calibrations of the self-check.

        Returns
        -------
        dict of str to ndarray
        """
        has_network = getattr(self, "network_", None) is not None
        methods = list(methods or (("ae", "zscore", "hybrid") if has_network else ("zscore",)))
        cals = {"ae": self.calibration_, "zscore": self.voxel_calibration_ if has_network else self.calibration_}
        cals.update(calibrations or {})
        needed = {"ae", "zscore"} if "hybrid" in methods else set(methods)
        out = {k: self._component_z(k, cals[k], std_data, present, age, sex) for k in needed}
        if "hybrid" in methods:
            # A peak-searched voxelwise PET beats its mean with the autoencoder's (README).
            out["hybrid"] = hybrid_z(out["ae"], out["zscore"], self.modalities_,
                                     voxelwise=(PET,) if self.pet_peak_size_ else ())
        return {k: out[k] for k in methods}

    def _component_z(self, kind: str, cal: CalibrationMaps, std_data: np.ndarray, present: np.ndarray,
                     age: float | None, sex: str | None) -> np.ndarray:
        """Masked z map of one component; a cross-fitted "ae" combines its networks' z maps
        (:func:`anomaly.normative.crossfit.ensemble_z`)."""
        n_networks = len(getattr(self, "networks_", None) or [])
        if kind != "ae" or n_networks < 2:
            return cal.zmap(self._residual(std_data, present, kind=kind), age, sex) * self.mask_
        from anomaly.normative.crossfit import ensemble_z

        return ensemble_z([cal.zmap(self._residual(std_data, present, kind=kind, network=k), age, sex) * self.mask_
                           for k in range(n_networks)], self.mask_)

    def _run_self_check(self, cached: Sequence[CachedSubject], split: ControlSplit, mean: np.ndarray,
                        std: np.ndarray) -> None:
        """Detection of injected lesions in held-out controls; ``auto`` picks its method here."""
        from anomaly.normative.crossfit import self_check_inputs
        from anomaly.normative.selfcheck import best_method, self_check

        self.self_check_ = self_check(*self_check_inputs(self, cached, split), mean, std,
                                      self._calibration_sums, seed=self.seed)
        del self._calibration_sums  # hundreds of MB at 2 mm, only needed for leave-one-out
        self.method_ = best_method(self.self_check_) if self.method == "auto" else self.method

    def reconstruct(self, std_data: np.ndarray, present: np.ndarray, *, network: int | None = None) -> np.ndarray:
        """Autoencoder reconstruction of standardised images, shape (C, X, Y, Z).

        A cross-fitted model returns the mean of its networks' reconstructions
        (:mod:`anomaly.normative.crossfit` says why), or network ``network``'s alone.
        """
        import torch

        from anomaly.normative.network import network_input

        self._check_fitted_network()
        device = getattr(self, "device_", torch.device("cpu"))
        networks = getattr(self, "networks_", None) or [self.network_]
        if network is not None:
            networks = [networks[network]]
        with torch.no_grad():
            x = network_input(torch.from_numpy(std_data[None]).to(device),
                              torch.from_numpy(np.asarray(present, bool)[None]).to(device))
            recon = networks[0].to(device)(x)[0]
            for net in networks[1:]:
                recon += net.to(device)(x)[0]
            recon = (recon / len(networks) if len(networks) > 1 else recon).cpu().numpy()
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
        z = self.component_z(std_data, prep.present, age, sex, methods=(self.method_,))[self.method_]
        z[~prep.present] = np.nan
        if prep.valid is not None:
            # Brain voxels a present image does not cover have no z, not a deviation.
            for c in np.flatnonzero(prep.present):
                z[c][self.mask_ & ~prep.valid[c]] = np.nan
        anomaly = combine_anomaly(z, prep.present, self.modalities_, self.mask_,
                                  directions=self.lesion_directions, rule=self.modality_rule)
        return SubjectScore(z=z, anomaly=self.postprocess(anomaly), present=prep.present,
                            modalities=list(self.modalities_), data=prep.data, qc=prep.qc, grid=self.grid_)

    def postprocess(self, anomaly: np.ndarray) -> np.ndarray:
        """This model's post-processing of a combined anomaly map (median filter, smoothing, erosion, rim)."""
        return postprocess_anomaly(anomaly, self.mask_, **self.postprocess_settings())

    def postprocess_settings(self) -> dict[str, float]:
        """Keywords of :func:`~anomaly.normative.maps.postprocess_anomaly` on this model's grid."""
        return {"median_size": self.median_size(), "smooth_sigma": self.map_smoothing_sigma(),
                "erode_voxels": self.erode_mask, "rim_voxels": self.map_rim_width()}

    def map_smoothing_sigma(self) -> float:
        """Gaussian sigma (voxels) of the anomaly map's smoothing on this model's grid (0: none)."""
        if self.map_smoothing is None:
            return MAP_SMOOTHING_MM / self.grid_.resolution
        return float(self.map_smoothing)

    def map_rim_width(self) -> float:
        """Width (voxels) of the anomaly map's rim outside the brain mask on this model's grid (0: none)."""
        if self.map_rim is None:
            return MAP_RIM_MM / self.grid_.resolution
        return float(self.map_rim)

    def median_size(self) -> int:
        """Window (voxels) of the anomaly map's median filter on this model's grid (0: none)."""
        if self.median_filter is None:
            return median_size_for_mm(MEDIAN_FILTER_MM, self.grid_.resolution)
        return int(self.median_filter)

    def training_epochs(self, n_train: int, world_size: int = 1) -> int:
        """Epochs a network trains for on ``n_train`` controls (split over ``world_size`` processes).

        ``epochs`` when set; otherwise :data:`DEFAULT_EPOCHS`, cut so that the network
        takes at most :data:`DEFAULT_MAX_STEPS` optimisation steps. Like nnU-Net's fixed
        number of iterations, this bounds the fit time once a cohort is large: a network
        trained on more than 40 controls (in batches of 2) trains fewer than 20 epochs, e.g.
        100 controls (two cross-fitted networks of 50) train 16; with the default two
        networks, cohorts of up to 80 controls are unaffected.
        """
        if self.epochs is not None:
            return int(self.epochs)
        # Imported here: the trainer imports torch, which a z-score model never needs.
        from anomaly.normative.trainer import steps_per_epoch

        steps = steps_per_epoch(n_train, self.batch_size, world_size)
        return max(1, min(DEFAULT_EPOCHS, DEFAULT_MAX_STEPS // max(steps, 1)))

    def pet_peak_size(self) -> int:
        """Edge (voxels) of the PET peak search that ``pet_peak_search`` asks for on this model's grid
        (0: none). ``fit`` records it as ``pet_peak_size_``, which scoring uses: the calibration
        holds that search, whatever the parameter or a later default says."""
        if self.pet_peak_search is None:
            return median_size_for_mm(PET_PEAK_MM, self.grid_.resolution)
        return int(self.pet_peak_search)

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
            model = cls(**{**_LEGACY_PARAMS, **files.metadata["training"], "device": device})
        except (KeyError, TypeError) as exc:
            raise AnomalyModelError(f"{files.path / METADATA}: inconsistent model settings ({exc})") from None
        try:
            model._check_params()
        except AnomalyInputError as exc:
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
            "method_used": self.method_,
            "self_check": self.self_check_,
            "recalibration": getattr(self, "recalibration_", None),
            "modalities": list(self.modalities_),
            "grid": {**self.grid_.to_dict(), "resolution": float(self.grid_.resolution),
                     "space": SPACE_LABEL},
            "normalisation": {"mri": "robust z (median, IQR/1.349) in the template brain mask",
                              "pet": f"SUVR, reference {self.pet_reference}",
                              "channel_mean": self.channel_mean_.tolist(),
                              "channel_std": self.channel_std_.tolist()},
            "calibration": {"covariates": ["age", "sex"] if cal.covariates else [],
                            "age_ref": cal.age_ref, "n_subjects": cal.n_subjects.tolist(),
                            "smooth_sigma_voxels": self.smooth_sigma,
                            "pet_peak_voxels": self.pet_peak_size_},
            "training": params,
            "history": self.history_,
            "data": self.train_summary_,
            "atlas_coverage": self.atlas_coverage_,
            "qc": _qc_metadata(self),
            "pet_levels": None if getattr(self, "pet_levels_", None) is None else self.pet_levels_.to_dict(),
        }

    def _calibration_arrays(self) -> dict[str, np.ndarray]:
        cal = self.calibration_
        arrays = {"beta": cal.beta, "sd": cal.sd, "n_subjects": cal.n_subjects.astype(np.int64),
                  "mask": self.mask_.astype(np.uint8), "channel_mean": self.channel_mean_,
                  "channel_std": self.channel_std_, "control_mean": self.control_mean_}
        voxel = getattr(self, "voxel_calibration_", None)
        if voxel is not None:  # the "zscore" component of a network model
            arrays.update(voxel_beta=voxel.beta, voxel_sd=voxel.sd,
                          voxel_n_subjects=voxel.n_subjects.astype(np.int64))
        return arrays

    def _weights(self) -> dict | None:
        from anomaly.normative.crossfit import stack_weights

        if self.network_ is None:
            return None
        networks = getattr(self, "networks_", None) or [self.network_]
        return stack_weights([{k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
                              for net in networks])

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
            self.voxel_calibration_ = None
            if "voxel_beta" in arrays:
                self.voxel_calibration_ = CalibrationMaps(
                    beta=arrays["voxel_beta"], sd=arrays["voxel_sd"], n_subjects=arrays["voxel_n_subjects"],
                    age_ref=float(cal["age_ref"]), covariates=arrays["voxel_beta"].shape[0] > 1)
            self.method_ = str(meta.get("method_used", meta["method"]))
            # The search the calibration was fitted with (none in folders written before it).
            self.pet_peak_size_ = int(cal.get("pet_peak_voxels", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise AnomalyModelError(f"{files.path / METADATA}: inconsistent model folder ({exc})") from None
        self.covariates_ = bool(cal["covariates"])
        self.history_ = meta.get("history", [])
        self.train_summary_ = meta.get("data", {})
        self.n_train_ = self.train_summary_.get("n_train", 0)
        self.n_calibration_ = self.train_summary_.get("n_calibration", 0)
        # Folders written before coverage was recorded: compute it now, silently.
        self.atlas_coverage_ = meta.get("atlas_coverage") or shipped_atlas_coverage(self.grid_)
        self.self_check_ = meta.get("self_check")
        self.recalibration_ = meta.get("recalibration")
        self.qc_reference_, self.qc_dropped_ = _qc_from_metadata(meta, files.path)
        self.pet_levels_ = _pet_levels_from_metadata(meta, files.path)
        self.network_ = None
        self.networks_ = []
        if self.method in NETWORK_METHODS:
            self._set_network(files, device)

    def _set_network(self, files: NormativeFiles, device: str) -> None:
        from anomaly.io import resolve_device
        from anomaly.normative.crossfit import split_weights
        from anomaly.normative.network import build_network

        self.device_ = resolve_device(device)
        self.networks_ = []
        try:  # folders written before cross-fitting record no cross_fit: one network
            for state in split_weights(files.weights, check_cross_fit(self.cross_fit)):
                network = build_network(len(self.modalities_), self.channels)
                network.load_state_dict(state)
                self.networks_.append(network.eval().to(self.device_))
        except (AnomalyInputError, KeyError, RuntimeError, TypeError):
            raise AnomalyModelError(
                f"{files.path / WEIGHTS}: weights do not fit the network(s) described in metadata.json") from None
        self.network_ = self.networks_[0]

    def describe(self) -> dict:
        """Short summary for reports (atlas coverage is in :attr:`atlas_coverage_`)."""
        self._check_fitted()
        from anomaly.normative.selfcheck import self_check_text

        out = {"method": self.method_, "modalities": list(self.modalities_),
               "resolution_mm": float(self.resolution), "grid_shape": list(self.grid_.shape),
               "n_train": int(self.n_train_), "n_calibration": int(self.n_calibration_),
               "covariates": bool(self.covariates_), "pet_reference": self.pet_reference}
        if getattr(self, "self_check_", None):
            out["self_check"] = self_check_text(self.self_check_)
        if getattr(self, "recalibration_", None):
            out["recalibrated_on"] = f"{self.recalibration_['n_local_controls']} local controls"
        return out


def shipped_atlas_coverage(grid: Grid) -> dict[str, dict]:
    """Coverage of every shipped atlas on ``grid`` (:func:`anomaly.atlas.atlases.grid_coverage`)."""
    from anomaly.atlas.atlases import Atlas, grid_coverage, list_atlases

    return {name: grid_coverage(Atlas.load(name), grid) for name in list_atlases()}


def _qc_metadata(model: NormativeModel) -> dict | None:
    """The controls' QC distribution and dropped controls, for metadata.json (None: no QC)."""
    reference = getattr(model, "qc_reference_", None)
    if reference is None:
        return None
    return {**reference.to_dict(), "dropped_controls": dict(getattr(model, "qc_dropped_", {}))}


def _pet_levels_from_metadata(meta: Mapping[str, Any], path: Path):
    """The controls' PET norms (PETNorms) from metadata.json; None for models fitted without them."""
    from anomaly.atlas.petlevels import PETNorms

    if meta.get("pet_levels") is None:
        return None
    try:
        return PETNorms.from_dict(meta["pet_levels"])
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise AnomalyModelError(f"{path / METADATA}: unreadable pet_levels ({exc})") from None


def _qc_from_metadata(meta: Mapping[str, Any], path: Path):
    """(QCReference or None, dropped controls) from metadata.json; None for models without QC."""
    from anomaly.qc import QCReference

    try:
        return QCReference.from_dict(meta.get("qc")), dict((meta.get("qc") or {}).get("dropped_controls", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise AnomalyModelError(f"{path / METADATA}: unreadable QC reference ({exc})") from None
