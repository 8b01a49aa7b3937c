"""Multiple-instance attention regressor of the CRS-R over atlas regions.

Each patient is a bag, each atlas region an instance. An instance is the region's row
of statistics (all modalities; missing values set to 0 after standardisation plus one
"fraction missing" flag per feature group) concatenated with a learned embedding of the
region's identity. A shared layer embeds every instance, gated attention pooling
(Ilse et al. 2018) weighs the regions,

    a_k = softmax_k( w^T (tanh(V h_k) * sigmoid(U h_k)) ),   z = sum_k a_k h_k,

and a small head maps the bag embedding ``z`` (plus subject-level values such as the
global cortical PET level, when present) to what the loss needs (see
:mod:`anomaly.crs.losses`).

The ensemble of ``n_seeds`` members is trained as ONE vectorised model: the members'
weights (:class:`MILNet`) are stacked along a leading member axis and one member's
forward pass is mapped over it (``torch.func.vmap``); the loss is the sum of the
members' losses, and AdamW is element-wise, so the members are trained exactly as if
they were trained one by one, at the cost of one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from anomaly.constants import CRS_LEVELS, CRS_MAX
from anomaly.io import resolve_device

from .coupling import apply_coupling, fit_coupling, global_level
from .curriculum import CURRICULA, curriculum_masks, curriculum_order, pacing_sizes
from .features import RegionBags, as_region_bags, damage_sign, feature_group
from .losses import (
    LossSpec,
    coral_point,
    corn_point,
    head_probabilities,
    lds_weights,
    softmax_point,
)
from .regions import hypothesis_prior, region_descriptors
from .signed import SignedMILNet

__all__ = ["EnsembleMILNet", "MILNet", "MILRegressor"]

#: Links of the scalar head (see MILRegressor's ``link``).
LINKS = ("identity", "log", "arousal-awareness")
#: Networks (see MILRegressor's ``architecture``).
ARCHITECTURES = ("signed", "gated")
#: Region priors of the signed network (see MILRegressor's ``region_prior``).
REGION_PRIORS = ("hypothesis", "geometry")
#: Feature standardisations (see MILRegressor's ``standardise``).
STANDARDISATIONS = ("region", "pooled")
# Default learning rate of each architecture.
_DEFAULT_LR = {"signed": 0.05, "gated": 0.01}
# Default training length per architecture: the signed network's 100 epochs act as early
# stopping on ~50 bags (README, "CRS-R": 300 fitted noise where regions carry little).
_DEFAULT_EPOCHS = {"signed": 100, "gated": 300}
# Pseudo-count of bags with which a region's SD is shrunk towards the pooled SD.
_SD_SHRINK_BAGS = 5.0
# Floor of a region's SD, as a fraction of the pooled SD.
_SD_FLOOR = 0.5
# Standardised inputs are clipped to +-this: a bag far outside the training range
# saturates instead of extrapolating (clipping keeps the sign constraints).
_INPUT_CLIP = 5.0
# Bound of the log-link score: exp(4) x the mean label covers 0..23 for any mean >= 0.5.
_LOG_SCORE_MAX = 4.0

_HEAD_OUT = {"scalar": 1, "coral": CRS_MAX, "corn": CRS_MAX, "softmax": CRS_LEVELS}


def _uniform(gen: torch.Generator, shape: Sequence[int], fan_in: int) -> torch.Tensor:
    # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return (torch.rand(*shape, generator=gen) * 2.0 - 1.0) * bound


class MILNet(nn.Module):
    """One gated-attention MIL network (a single ensemble member).

    Parameters
    ----------
    n_inputs : int
        Instance features (standardised features + missing flags).
    n_regions : int
        Number of regions ``R`` (size of the region-identity embedding table).
    n_globals : int
        Subject-level inputs appended to the bag embedding (0 for none).
    hidden : int
        Instance embedding size ``H``.
    region_embedding : int
        Size of the learned region-identity embedding (0 disables it).
    attention_dim : int
        Size ``L`` of the gated-attention hidden layer.
    heads : sequence of str
        Output heads (``"scalar"``, ``"coral"``, ``"corn"``, ``"softmax"``).
    seed : int
        Initialisation seed (one generator, drawn in a fixed order: a seed always gives
        the same weights).
    dropout : float, default=0.0
        Rate of the channel-dropout mask given to :meth:`forward`.
    """

    def __init__(self, *, n_inputs: int, n_regions: int, n_globals: int, hidden: int, region_embedding: int,
                 attention_dim: int, heads: Sequence[str], seed: int, dropout: float = 0.0) -> None:
        super().__init__()
        H, L, d = hidden, attention_dim, region_embedding
        self.heads = list(heads)
        self.n_globals = n_globals
        self.dropout = float(dropout)
        gen = torch.Generator().manual_seed(int(seed))

        def add(name: str, tensor: torch.Tensor) -> None:
            self.register_parameter(name, nn.Parameter(tensor))

        add("w_in", _uniform(gen, (n_inputs, H), n_inputs + d))
        add("b_in", _uniform(gen, (H,), n_inputs + d))
        if d > 0:
            add("region_embedding", torch.randn(n_regions, d, generator=gen))
            add("w_region", _uniform(gen, (d, H), n_inputs + d))
        add("att_v", _uniform(gen, (H, L), H))
        add("att_v_bias", _uniform(gen, (L,), H))
        add("att_u", _uniform(gen, (H, L), H))
        add("att_u_bias", _uniform(gen, (L,), H))
        add("att_w", _uniform(gen, (L,), L))
        D = H + n_globals
        for head in self.heads:
            # CORAL shares one weight vector across the K-1 thresholds; so does CORN
            # here: 23 independent weight vectors overfit ~50 patients badly, and the
            # conditional training, not the weights, makes CORN rank-consistent.
            n_w = 1 if head in ("coral", "corn") else _HEAD_OUT[head]
            add(f"{head}_weight", _uniform(gen, (D, n_w), D))
            add(f"{head}_bias", torch.zeros(_HEAD_OUT[head]))

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Forward pass of one member.

        Parameters
        ----------
        x : tensor (N, R, n_inputs)
        g : tensor (N, n_globals), optional
        keep : tensor (N, 1, H), optional
            Channel-dropout mask of 0/1 (training only).

        Returns
        -------
        dict
            ``attention`` (N, R) and one entry per head: ``scalar`` (N,) or logits
            (N, K-1 / K).
        """
        N, R, _ = x.shape
        h = (x.reshape(N * R, -1) @ self.w_in + self.b_in).view(N, R, -1)
        if hasattr(self, "region_embedding"):
            # Region identity: lets attention and the embedding depend on *where*.
            h = h + (self.region_embedding @ self.w_region)[None]
        h = F.relu(h)
        if keep is not None:
            h = h * keep / (1.0 - self.dropout)
        # Both gates in one matmul: [tanh(V h) | sigmoid(U h)].
        vu = h.reshape(N * R, -1) @ torch.cat([self.att_v, self.att_u], dim=-1)
        vu = vu + torch.cat([self.att_v_bias, self.att_u_bias], dim=-1)
        L = self.att_v.shape[-1]
        gate = torch.tanh(vu[..., :L]) * torch.sigmoid(vu[..., L:])
        attention = torch.softmax((gate @ self.att_w).view(N, R), dim=-1)
        z = torch.einsum("nr,nrh->nh", attention, h)
        if self.n_globals:
            z = torch.cat([z, g], dim=-1)
        out = {"attention": attention}
        for head in self.heads:
            value = z @ getattr(self, f"{head}_weight") + getattr(self, f"{head}_bias")
            out[head] = value[..., 0] if head == "scalar" else value
        return out


class EnsembleMILNet(nn.Module):
    """``S`` independent members (:class:`MILNet` or :class:`~anomaly.crs.signed.SignedMILNet`) as stacked weights.

    The members' parameters are stacked along a leading member axis
    (:func:`torch.func.stack_module_state`) under the members' own names, and the
    forward pass maps one member's network over that axis
    (:func:`torch.func.vmap` of :func:`torch.func.functional_call`). Buffers (fixed
    inputs such as region descriptors) are the same for every member: one copy is kept.

    Parameters
    ----------
    members : sequence of nn.Module
        Networks of the same architecture, each initialised from its own seed.
    channels : int
        Width of the instance embedding that channel dropout masks.
    dropout : float
        Dropout of instance-embedding channels during training (one mask per bag
        and member, shared by the bag's regions).
    """

    def __init__(self, members: Sequence[nn.Module], *, channels: int, dropout: float) -> None:
        super().__init__()
        first = members[0]
        self.heads = list(first.heads)
        self.dropout = float(dropout)
        self.channels = int(channels)
        params, _ = stack_module_state(list(members))
        for name, tensor in params.items():
            self.register_parameter(name, nn.Parameter(tensor))
        for name, tensor in first.named_buffers():
            self.register_buffer(name, tensor.clone(), persistent=False)
        # The member network without weights (meta device): only its forward is used.
        # Kept out of the module tree so that the stacked weights are the only parameters.
        self._template = (first.to("meta"),)

    @property
    def n_members(self) -> int:
        return int(next(self.parameters()).shape[0])

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Forward pass of every member.

        Parameters
        ----------
        x : tensor (N, R, n_inputs)
        g : tensor (N, n_globals), optional

        Returns
        -------
        dict
            ``attention`` (S, N, R) and one entry per head: ``scalar`` (S, N) or
            logits (S, N, K-1 / K).
        """
        S, N = self.n_members, x.shape[0]
        params = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        template = self._template[0]
        keep = None
        if self.training and self.dropout > 0:
            # Channel dropout shared by a bag's regions: one mask per (member, bag,
            # channel), drawn for all members at once outside the vmap.
            keep = (torch.rand(S, N, 1, self.channels, device=x.device) >= self.dropout).to(x.dtype)

        def member(p: dict[str, torch.Tensor], k: torch.Tensor | None) -> dict[str, torch.Tensor]:
            return functional_call(template, (p, buffers), (x, g, k))

        return vmap(member, in_dims=(0, None if keep is None else 0))(params, keep)


class MILRegressor(BaseEstimator):
    """Multiple-instance attention regressor of the CRS-R total score.

    Two architectures share the losses, curricula, ensembling and input handling:
    ``"signed"`` (default; :mod:`anomaly.crs.signed`: ~150 parameters per member,
    per-channel log-sum-exp attention with a region prior from the atlas geometry, an
    instance encoder that sees the global level, sign constraints so that more
    damage never raises the prediction) and ``"gated"`` (the earlier gated-attention
    network, Ilse et al. 2018, with a learned region embedding).

    Parameters
    ----------
    loss : str or mapping, default="mae"
        ``"mae"`` (the error the CRS-R is scored with; on the synthetic tables it
        lowered the cross-validated MAE from 2.34 to 2.05, a tie on the realistic
        pipeline cohort), ``"mse"``, ``"huber"``, ``"coral"``, ``"corn"``, ``"rank"``, ``"kappa"``,
        ``"soft"`` or a combination such as ``"coral+rank"`` or ``"mse:1,rank:0.5"``
        (see :func:`anomaly.crs.losses.parse_loss`). The first non-ranking loss gives
        the point prediction.
    loss_weights : mapping, optional
        Weights overriding those in ``loss``.
    architecture : {"signed", "gated"}, default="signed"
        Network (see above).
    standardise : {"region", "pooled"}, default="region"
        Feature standardisation over the training bags: per region and feature (the
        region's SD shrunk towards the pooled SD with the weight of 5 bags, so that a
        region seen in few bags stays stable), or per feature over all instances
        pooled (earlier behaviour).
    channels : int, default=2
        ``"signed"``: instance channels, each pooled by its own attention (with the
        ``"hypothesis"`` prior, one starts on the arousal regions, one on the awareness
        regions). Two channels and 100 epochs gave a lower cross-validated MAE than four
        and 300 on both realistic development cohorts (2.49 -> 2.26, 3.23 -> 2.94) and a
        better localisation on two held-out ones, where the MAE split (README, "CRS-R").
    prior_hidden : int, default=8
        ``"signed"``: hidden units of the region-prior MLP.
    region_prior : {"hypothesis", "geometry"}, default="hypothesis"
        ``"signed"``: ``"hypothesis"`` starts the first two channels' attention on the
        arousal (brainstem, thalami) and awareness (posteromedial, frontal) regions
        (:func:`anomaly.crs.regions.hypothesis_prior`; learned gain, so the data can
        undo it); ``"geometry"`` learns the prior from the atlas geometry alone.
    hidden : int, default=16
        ``"gated"``: instance embedding size.
    region_embedding : int, optional
        Size of the learned region-identity embedding: default 4 for ``"gated"``; for
        ``"signed"`` an embedding given to the region prior next to the atlas
        descriptors, default 0 (2 when the atlas is not a shipped one).
    attention_dim : int, default=8
        ``"gated"``: gated-attention hidden size.
    dropout : float, default=0.1
        Channel dropout of the instance embeddings (see :class:`EnsembleMILNet`).
    weight_decay : float, default=1e-3
        AdamW decoupled weight decay.
    lr : float, optional
        Initial learning rate (cosine-annealed to 5% over training); default 0.05
        for ``"signed"`` (its constrained weights live on a softplus scale) and 0.01
        for ``"gated"``.
    epochs : int, optional
        Full-batch training epochs (cosine-annealed learning rate); default 100 for
        ``"signed"``, 300 for ``"gated"``. Fewer epochs keep the signed network close to
        its start (the global level and the region prior) unless the regions carry
        signal: on the realistic development cohorts 300 epochs fitted noise where the
        regional measures are weak (README, "CRS-R").
    batch_size : int, optional
        Bags per step; None (default) trains full-batch, which for ~50 bags is both
        fastest and best for the pairwise and kappa losses.
    n_seeds : int, default=5
        Ensemble members (different initialisations and dropout draws); predictions
        are the ensemble mean and their spread a measure of model uncertainty.
    lds : bool, default=False
        Label-distribution-smoothing sample weights against label imbalance.
    curriculum : {None, "confidence", "self-paced", "random"}
        Easy-to-hard ordering with linear pacing (``"random"`` is the control with the
        same growing set sizes).
    curriculum_start : float, default=0.4
        Fraction of the training set used at the first epoch; the set grows linearly
        to the full set over the first half of the epochs.
    mcs_cut : float, default=8
        UWS/MCS boundary used by the "confidence" curriculum when no label SDs are
        given.
    label_sd : float, default=1.5
        Label-noise SD for the soft-label loss when a patient has no ``crs_sd``.
    use_globals : bool, default=True
        Feed subject-level values (``global_features``) to the head.
    link : {"log", "identity", "arousal-awareness"}, default="log"
        Link of the scalar head (mse, huber). ``"log"`` predicts
        ``max(mean_y, 0.5) * exp(score)``, so that region effects *multiply* rather
        than add, as in the arousal x awareness structure of the CRS-R (a patient
        without arousal scores low whatever the cortex); the loss stays on the label
        scale. On the simulated coma pipeline it lowered the cross-validated MAE
        (README, "CRS-R"). Ordinal and softmax heads, and a ranking-only loss
        (calibrated afterwards), ignore it. ``"arousal-awareness"`` (``"signed"``
        only) predicts ``23 sigmoid(s_arousal) sigmoid(s_awareness)`` from two
        sign-constrained scores of the pooled channels, the structure of the
        hypothesis baseline (:mod:`anomaly.crs.hypothesis`).
    modality_dropout : float, default=0.2
        During training, each bag's modality groups (e.g. all ``pet_*`` columns, and
        subject-level values named after the modality) are hidden with this
        probability, exactly as a missing modality is presented (value 0 = training
        mean, missing flag 1), so that a model trained on patients who nearly all
        have PET has seen bags without PET. On the realistic pipeline cohort (3 of 50
        patients without PET) it took their out-of-fold MAE from 7.1 to 3.1 points
        and the overall MAE from 2.51 to 2.12 (README, "CRS-R").
    global_coupling : bool, default=False
        Correct the focal PET features (``pet_focal_logratio*``) for each region's
        coupling to the global cortical level (deep grey matter, brainstem and
        cerebellum follow the cortex less, so their ratio rises as the cortex falls):
        Theil-Sen slopes on ``log(global_cortical_pet_percent / 100)``, fitted on the
        training bags in :meth:`fit` and applied unchanged in predict
        (:mod:`anomaly.crs.coupling`). Regions with fewer than 10 training bags with
        both values, and bags without a known level, are left as they are. Off by
        default: on the realistic pipeline cohort (5-fold CV repeated 10 times) it
        changed the MAE by +0.05 [-0.03, +0.13] (README, "CRS-R").
    seed : int, default=0
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"`` or ``"auto"``.

    Attributes
    ----------
    net_ : EnsembleMILNet
    feature_names_, region_index_, region_names_, global_feature_names_ : list
    feature_mean_, feature_scale_ : ndarray (F,)
        Standardisation fitted on the training bags (NaN-aware).
    global_mean_, global_scale_ : ndarray (G,)
    groups_ : list of str
        Feature groups that get a missing flag.
    y_mean_, y_scale_ : float
    calibration_ : ndarray (S, 2)
        Per-member affine map of the raw prediction (identity unless the loss is
        scale free, i.e. ranking only).
    sample_weight_ : ndarray (N,)
        LDS weights used in training (ones without ``lds``).
    curriculum_sizes_ : ndarray (epochs,) or None
    global_coupling_ : dict of str to GlobalCoupling
        Fitted slopes per coupled feature (empty without ``global_coupling`` or
        without focal PET features and a global level in the training bags).
    loss_history_ : ndarray (epochs,)
        Mean member loss per epoch.
    """

    def __init__(self, loss: str | Mapping[str, float] = "mae", loss_weights: Mapping[str, float] | None = None,
                 architecture: str = "signed", standardise: str = "region", channels: int = 2,
                 prior_hidden: int = 8, region_prior: str = "hypothesis",
                 hidden: int = 16, region_embedding: int | None = None, attention_dim: int = 8, dropout: float = 0.1,
                 weight_decay: float = 1e-3, lr: float | None = None, epochs: int | None = None, batch_size: int | None = None,
                 n_seeds: int = 5, lds: bool = False, curriculum: str | None = None, curriculum_start: float = 0.4,
                 mcs_cut: float = 8, label_sd: float = 1.5, use_globals: bool = True, link: str = "log",
                 modality_dropout: float = 0.2, global_coupling: bool = False, seed: int = 0,
                 device: str = "cpu") -> None:
        self.loss = loss
        self.loss_weights = loss_weights
        self.architecture = architecture
        self.standardise = standardise
        self.channels = channels
        self.prior_hidden = prior_hidden
        self.region_prior = region_prior
        self.hidden = hidden
        self.region_embedding = region_embedding
        self.attention_dim = attention_dim
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.n_seeds = n_seeds
        self.lds = lds
        self.curriculum = curriculum
        self.curriculum_start = curriculum_start
        self.mcs_cut = mcs_cut
        self.label_sd = label_sd
        self.use_globals = use_globals
        self.link = link
        self.modality_dropout = modality_dropout
        self.global_coupling = global_coupling
        self.seed = seed
        self.device = device

    # ------------------------------------------------------------------ validation
    def _n_epochs(self) -> int:
        """Training epochs: ``epochs``, or the architecture's default."""
        return int(self.epochs) if self.epochs is not None else _DEFAULT_EPOCHS[self.architecture]

    def _validate_params(self) -> LossSpec:
        spec = LossSpec.parse(self.loss, self.loss_weights)
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.region_prior not in REGION_PRIORS:
            raise ValueError(f"region_prior must be one of {', '.join(REGION_PRIORS)}, got {self.region_prior!r}")
        if self.standardise not in STANDARDISATIONS:
            raise ValueError(f"standardise must be one of {', '.join(STANDARDISATIONS)}, got {self.standardise!r}")
        for name in ("hidden", "n_seeds", "channels", "prior_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs is not None and int(self.epochs) < 1:
            raise ValueError(f"epochs must be None or >= 1, got {self.epochs}")
        if (self.region_embedding is not None and int(self.region_embedding) < 0) or int(self.attention_dim) < 1:
            raise ValueError("region_embedding must be >= 0 and attention_dim >= 1")
        if not 0 <= float(self.dropout) < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if (self.lr is not None and float(self.lr) <= 0) or float(self.weight_decay) < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if self.batch_size is not None and int(self.batch_size) < 2:
            raise ValueError(f"batch_size must be None or >= 2, got {self.batch_size}")
        if self.curriculum is not None and self.curriculum not in CURRICULA:
            raise ValueError(f"curriculum must be None or one of {', '.join(CURRICULA)}, got {self.curriculum!r}")
        if not 0 <= float(self.modality_dropout) < 1:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if self.link not in LINKS:
            raise ValueError(f"link must be one of {', '.join(LINKS)}, got {self.link!r}")
        if self.link == "arousal-awareness" and self.architecture != "signed":
            raise ValueError("link 'arousal-awareness' needs architecture 'signed'")
        if not float(self.label_sd) > 0:
            raise ValueError(f"label_sd must be > 0, got {self.label_sd}")
        return spec

    # ------------------------------------------------------------------ inputs
    def _fit_standardisation(self, bags: RegionBags) -> None:
        """Centre and scale of every (region, feature), and of the global values."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            feats = bags.features.astype(np.float64)
            if self.architecture == "signed":
                feats = self._orient(feats, self.feature_names_)
            flat = feats.reshape(-1, feats.shape[-1])
            mean = np.nanmean(flat, axis=0)[None]  # (1, F)
            scale = np.nanstd(flat, axis=0)[None]
            if self.standardise == "region":
                n = np.isfinite(feats).sum(0)  # (R, F)
                r_mean = np.nanmean(feats, axis=0)
                r_var = np.nanvar(feats, axis=0)
                mean = np.where(n > 0, r_mean, mean)
                # The pooled SD *within* regions: a region's constant offset is no spread.
                scale = np.sqrt(np.nansum(r_var * n, axis=0) / np.maximum(n.sum(0), 1))[None]
                # A region's variance shrunk towards the pooled one: stable with few bags.
                var = (np.where(n > 1, r_var, 0.0) * n + _SD_SHRINK_BAGS * scale ** 2) / (n + _SD_SHRINK_BAGS)
                # Floored: a region that barely varied in training (healthy in every
                # bag) must not turn a new patient's lesion there into a 20-SD input.
                scale = np.maximum(np.sqrt(var), _SD_FLOOR * scale)
            if bags.global_features is not None and self.use_globals:
                graw = bags.global_features.astype(np.float64)
                if self.architecture == "signed":
                    graw = self._orient(graw, self.global_feature_names_)
                gmean = np.nanmean(graw, axis=0)
                gscale = np.nanstd(graw, axis=0)
            else:
                gmean = gscale = np.zeros(0)
        # A feature never observed in training carries no information: centre 0, scale 1.
        self.feature_mean_ = np.where(np.isfinite(mean), mean, 0.0).astype(np.float64)
        self.feature_scale_ = np.where(np.isfinite(scale) & (scale > 1e-8), scale, 1.0).astype(np.float64)
        self.global_mean_ = np.where(np.isfinite(gmean), gmean, 0.0).astype(np.float64)
        self.global_scale_ = np.where(np.isfinite(gscale) & (gscale > 1e-8), gscale, 1.0).astype(np.float64)
        self.groups_ = list(dict.fromkeys(feature_group(n) for n in self.feature_names_))

    @staticmethod
    def _orient(values: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """Raw values with the damage direction positive (:func:`damage_sign`).

        A feature without a known direction is left as it is; the network gives it a
        free (unconstrained) weight.
        """
        signs = np.array([damage_sign(n) for n in names], dtype=np.float64)
        return values * np.where(signs == 0, 1.0, signs)

    def _design(self, bags: RegionBags) -> tuple[np.ndarray, np.ndarray | None]:
        """Standardised instance inputs (N, R, F + n_groups) and global inputs (N, 2G).

        ``"signed"`` orients every value so that larger means more damage first.
        """
        signed = self.architecture == "signed"
        x = bags.features.astype(np.float64)
        if signed:
            x = self._orient(x, self.feature_names_)
        x = (x - self.feature_mean_) / self.feature_scale_
        miss = bags.missing | ~np.isfinite(x)
        if signed:
            x = np.clip(x, -_INPUT_CLIP, _INPUT_CLIP)
        x = np.where(miss, 0.0, x)  # missing -> the training mean
        group_of = np.array([self.groups_.index(feature_group(n)) for n in self.feature_names_])
        flags = np.zeros(x.shape[:2] + (len(self.groups_),))
        for k in range(len(self.groups_)):
            flags[..., k] = miss[..., group_of == k].mean(-1)
        x = np.concatenate([x, flags], axis=-1).astype(np.float32)
        g = None
        if len(self.global_feature_names_):
            graw = bags.global_features if bags.global_features is not None else np.full((len(bags), len(self.global_feature_names_)), np.nan)
            graw = graw.astype(np.float64)
            if signed:
                graw = self._orient(graw, self.global_feature_names_)
            gz = (graw - self.global_mean_) / self.global_scale_
            gmiss = ~np.isfinite(gz)
            g = np.concatenate([np.where(gmiss, 0.0, gz), gmiss], axis=-1).astype(np.float32)
        return x, g

    def _check_bags(self, bags: RegionBags | np.ndarray) -> RegionBags:
        check_is_fitted(self, "net_")
        if not isinstance(bags, RegionBags):
            arr = np.asarray(bags, dtype=np.float32)
            if arr.ndim != 3 or arr.shape[1:] != (len(self.region_index_), len(self.feature_names_)):
                raise ValueError(
                    f"bags array must have shape (N, {len(self.region_index_)}, {len(self.feature_names_)}), got {arr.shape}"
                )
            bags = RegionBags.from_array(arr, feature_names=self.feature_names_, region_index=self.region_index_,
                                         region_names=self.region_names_)
        # The level is read before alignment, which keeps only the model's global inputs.
        level = global_level(bags)
        if not (np.array_equal(bags.region_index, self.region_index_) and bags.feature_names == self.feature_names_
                and bags.global_feature_names == self.global_feature_names_):
            bags = bags.align(region_index=self.region_index_, feature_names=self.feature_names_,
                              global_feature_names=self.global_feature_names_)
        # The training bags' slopes, never refitted on the bags being predicted.
        return apply_coupling(bags, level, getattr(self, "global_coupling_", None) or {})

    # ------------------------------------------------------------------ fitting
    def fit(self, bags: RegionBags | np.ndarray, y: Sequence[float], y_sd: Sequence[float] | None = None) -> MILRegressor:
        """Fit the ensemble.

        Parameters
        ----------
        bags : RegionBags or array (N, R, F)
            NaN / ``missing`` entries are handled (set to the training mean + flag).
        y : array-like (N,)
            CRS-R totals in 0..23.
        y_sd : array-like (N,), optional
            Per-patient label SD (``crs_sd``); used by the soft-label loss and the
            confidence curriculum. NaN -> ``label_sd``.

        Returns
        -------
        self
        """
        spec = self._validate_params()
        bags = as_region_bags(bags)
        y, sd, sd_known = self._check_targets(bags, y, y_sd, spec)
        masks = self._curriculum(bags, y, y_sd, sd_known)
        # Fitted on the training bags only, before the standardisation that sees its output.
        level = global_level(bags)
        self.global_coupling_ = fit_coupling(bags, level) if self.global_coupling else {}
        bags = apply_coupling(bags, level, self.global_coupling_)
        self._fit_layout(bags, y)
        x, g = self._design(bags)
        device = resolve_device(self.device)
        n_members = int(self.n_seeds)
        net = self._build_network(n_members=n_members, n_inputs=x.shape[-1], n_regions=x.shape[1],
                                  n_globals=0 if g is None else g.shape[1], heads=spec.heads,
                                  seeds=[int(self.seed) * 1000 + k for k in range(n_members)])
        self._init_head_biases(net, y)
        net.to(device)
        self.loss_history_ = self._train(net, spec, x, g, y, sd, self.sample_weight_, masks, device)
        net.eval()
        self.net_ = net
        self.calibration_ = np.tile([1.0, 0.0], (n_members, 1))
        if spec.scale_free:
            # Ranking fixes the order only: map each member's score onto the label scale
            # by least squares on the training bags.
            raw = self._raw_points(x, g)
            for s in range(n_members):
                A = np.stack([raw[s], np.ones_like(raw[s])], 1)
                slope, icpt = np.linalg.lstsq(A, y, rcond=None)[0]
                if self.architecture == "signed" and slope < 0:
                    # A negative map would undo the sign constraints: a constant instead.
                    slope, icpt = 0.0, float(y.mean())
                self.calibration_[s] = (slope, icpt)
        return self

    def _build_network(self, *, n_members: int, n_inputs: int, n_regions: int, n_globals: int,
                       heads: Sequence[str], seeds: Sequence[int]) -> EnsembleMILNet:
        """The untrained ensemble for this estimator's architecture and the fitted layout."""
        if len(seeds) != n_members:
            raise ValueError(f"{n_members} members need {n_members} seeds, got {len(seeds)}")
        if self.architecture == "signed":
            desc = self.region_descriptors_
            n_flags = n_inputs - len(self.feature_names_)
            offset = (hypothesis_prior(self.region_names_, int(self.channels))
                      if self.region_prior == "hypothesis" else None)
            free_values = torch.tensor([damage_sign(n) == 0 for n in self.feature_names_], dtype=torch.bool)
            free_globals = torch.tensor([damage_sign(n) == 0 for n in self.global_feature_names_], dtype=torch.bool)
            members = [SignedMILNet(n_values=len(self.feature_names_), free_values=free_values,
                                    free_globals=free_globals, n_flags=n_flags, n_globals=n_globals,
                                    channels=int(self.channels),
                                    descriptors=None if desc is None else torch.as_tensor(desc),
                                    n_regions=n_regions, region_embedding=int(self.region_embedding or 0),
                                    prior_hidden=int(self.prior_hidden), heads=heads, seed=s,
                                    prior_offset=None if offset is None else torch.as_tensor(offset),
                                    product_head=self.link == "arousal-awareness",
                                    dropout=float(self.dropout))
                       for s in seeds]
            return EnsembleMILNet(members, channels=int(self.channels), dropout=float(self.dropout))
        embedding = 4 if self.region_embedding is None else int(self.region_embedding)
        members = [MILNet(n_inputs=n_inputs, n_regions=n_regions, n_globals=n_globals, hidden=int(self.hidden),
                          region_embedding=embedding, attention_dim=int(self.attention_dim),
                          heads=heads, seed=s, dropout=float(self.dropout))
                   for s in seeds]
        return EnsembleMILNet(members, channels=int(self.hidden), dropout=float(self.dropout))

    def _check_targets(self, bags: RegionBags, y: Sequence[float], y_sd: Sequence[float] | None,
                       spec: LossSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Labels (rounded for ordinal heads), label SDs (NaN -> ``label_sd``) and the SDs as given."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.shape[0] != len(bags):
            raise ValueError(f"y has {y.shape[0]} values but there are {len(bags)} bags")
        if not np.isfinite(y).all():
            raise ValueError("y contains missing or non-finite values")
        if (y < 0).any() or (y > CRS_MAX).any():
            raise ValueError(f"y must be CRS-R totals in 0..{CRS_MAX}")
        if len(bags) < 2:
            raise ValueError("at least 2 bags are needed to fit")
        if any(h != "scalar" for h in spec.heads):
            y = np.rint(y)  # ordinal heads need integer levels
        sd = np.full(len(y), float(self.label_sd)) if y_sd is None else np.asarray(y_sd, dtype=np.float64).reshape(-1)
        if sd.shape != y.shape:
            raise ValueError("y_sd must have one value per bag")
        sd_known = None if y_sd is None else sd.copy()
        sd = np.where(np.isfinite(sd) & (sd > 0), sd, float(self.label_sd))
        return y, sd, sd_known

    def _fit_layout(self, bags: RegionBags, y: np.ndarray) -> None:
        """Input layout, standardisation, label scale and sample weights learned from the training bags."""
        self.feature_names_ = list(bags.feature_names)
        self.region_index_ = np.asarray(bags.region_index, dtype=np.int64)
        self.region_names_ = list(bags.region_names)
        self.global_feature_names_ = list(bags.global_feature_names) if (self.use_globals and bags.global_features is not None) else []
        self.atlas_ = bags.atlas
        self.region_descriptors_ = (region_descriptors(bags.atlas, self.region_index_)
                                    if self.architecture == "signed" else None)
        self._fit_standardisation(bags)
        self.n_features_in_ = len(self.feature_names_)
        self.y_mean_ = float(y.mean())
        self.y_scale_ = float(max(y.std(), 1.0))
        self.sample_weight_ = lds_weights(y) if self.lds else np.ones(len(y))

    def _curriculum(self, bags: RegionBags, y: np.ndarray, y_sd: Sequence[float] | None,
                    sd_known: np.ndarray | None) -> np.ndarray | None:
        """Per-epoch training masks of the curriculum (None without one); sets ``curriculum_sizes_``."""
        self.curriculum_sizes_ = None
        if self.curriculum is None:
            return None
        rng = np.random.default_rng(self.seed)
        sample_loss = None
        if self.curriculum == "self-paced":
            # A quick first model (same losses, one member, a quarter of the epochs)
            # scores every training bag; those it already fits are the easy ones.
            first = self.__class__(**{**self.get_params(), "curriculum": None, "n_seeds": 1,
                                      "epochs": max(10, self._n_epochs() // 4)})
            first.fit(bags, y, y_sd)
            sample_loss = np.abs(first.predict(bags) - y)
        order = curriculum_order(self.curriculum, y=y, y_sd=sd_known, sample_loss=sample_loss,
                                 cut=float(self.mcs_cut), rng=rng)
        self.curriculum_sizes_ = pacing_sizes(len(y), self._n_epochs(), start=float(self.curriculum_start))
        return curriculum_masks(order, self.curriculum_sizes_)

    def _init_head_biases(self, net: EnsembleMILNet, y: np.ndarray) -> None:
        """Start ordinal/softmax heads at the (smoothed) training label prior."""
        levels = np.arange(CRS_LEVELS)
        with torch.no_grad():
            if "scalar" in net.heads and self.link == "arousal-awareness":
                # Both sigmoids start at sqrt(mean / 23): the first prediction is the mean.
                p = float(np.clip(np.sqrt(max(y.mean(), 0.5) / CRS_MAX), 0.05, 0.95))
                net.scalar_bias.fill_(math.log(p / (1 - p)))
            if "coral" in net.heads:
                p = (np.array([(y > k).sum() for k in levels[:-1]]) + 0.5) / (len(y) + 1.0)
                net.coral_bias.copy_(torch.as_tensor(np.log(p / (1 - p)), dtype=torch.float32))
            if "corn" in net.heads:
                above = np.array([(y > k).sum() for k in levels[:-1]])
                at_risk = np.array([(y >= k).sum() for k in levels[:-1]])
                p = (above + 0.5) / (at_risk + 1.0)
                net.corn_bias.copy_(torch.as_tensor(np.log(p / (1 - p)), dtype=torch.float32))
            if "softmax" in net.heads:
                hist = np.bincount(np.rint(y).astype(int), minlength=CRS_LEVELS) + 0.5
                net.softmax_bias.copy_(torch.as_tensor(np.log(hist / hist.sum()), dtype=torch.float32))

    def _outputs(self, net: EnsembleMILNet, x: torch.Tensor, g: torch.Tensor | None,
                 spec: LossSpec) -> dict[str, torch.Tensor]:
        """Network outputs with the link applied and the primary prediction as ``point``."""
        out = net(x, g)
        # A ranking-only loss pins no scale (a least-squares map calibrates it after
        # training); exp() of an unanchored score would only distort that map.
        if "scalar" in out and self.link == "arousal-awareness" and not spec.scale_free:
            # The network gives log(sigmoid(s_arousal) sigmoid(s_awareness)) <= 0.
            out["scalar"] = (CRS_MAX * torch.exp(out["scalar"]) - self.y_mean_) / self.y_scale_
        elif "scalar" in out and self.link == "log" and not spec.scale_free:
            # Re-express the log-link prediction as a standardised score, so that the
            # losses and _points treat both links alike.
            # The base is kept off 0 so that a training set of zeros can still move.
            base = max(self.y_mean_, 0.5)
            score = out["scalar"].clamp(-_LOG_SCORE_MAX, _LOG_SCORE_MAX)
            out["scalar"] = (base * torch.exp(score) - self.y_mean_) / self.y_scale_
        out["point"] = self._points(out, spec.primary)
        return out

    def _points(self, out: Mapping[str, torch.Tensor], head: str) -> torch.Tensor:
        """Primary-head prediction on the label scale (S, N)."""
        if head == "scalar":
            return self.y_mean_ + self.y_scale_ * out["scalar"]
        if head == "coral":
            return coral_point(out["coral"])
        if head == "corn":
            return corn_point(out["corn"])
        return softmax_point(out["softmax"])

    def _train(self, net: EnsembleMILNet, spec: LossSpec, x: np.ndarray, g: np.ndarray | None, y: np.ndarray,
               sd: np.ndarray, weight: np.ndarray, masks: np.ndarray | None, device: torch.device) -> np.ndarray:
        xt = torch.as_tensor(x, device=device)
        gt = None if g is None else torch.as_tensor(g, device=device)
        drop = self._modality_dropout_plan(device)
        yt = torch.as_tensor(y, dtype=torch.float32, device=device)
        sdt = torch.as_tensor(sd, dtype=torch.float32, device=device)
        wt = torch.as_tensor(weight, dtype=torch.float32, device=device)
        mt = None if masks is None else torch.as_tensor(masks, dtype=torch.float32, device=device)
        epochs = self._n_epochs()
        lr = float(self.lr) if self.lr is not None else _DEFAULT_LR[self.architecture]
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=float(self.weight_decay))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=0.05 * lr)
        n = len(y)
        bs = n if self.batch_size is None else min(int(self.batch_size), n)
        history = np.zeros(epochs)
        # Own RNG stream for dropout and batch order: reproducible, no global side effects.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(self.seed))
            net.train()
            for epoch in range(epochs):
                w_epoch = wt if mt is None else wt * mt[epoch]
                x_epoch, g_epoch = (xt, gt) if drop is None else self._drop_modalities(xt, gt, drop)
                order = torch.randperm(n, device=device) if bs < n else torch.arange(n, device=device)
                total = 0.0
                for start in range(0, n, bs):
                    idx = order[start:start + bs]
                    if bs < n and len(idx) < 2:
                        continue  # a lone bag has no pairs and no batch statistics
                    if float(w_epoch[idx].sum()) <= 0:
                        continue
                    out = self._outputs(net, x_epoch[idx], None if g_epoch is None else g_epoch[idx], spec)
                    loss = spec(out, yt[idx], w_epoch[idx], y_mean=self.y_mean_, y_scale=self.y_scale_, sd=sdt[idx])
                    opt.zero_grad(set_to_none=True)
                    # Members are independent: summing their losses keeps their gradients apart.
                    loss.sum().backward()
                    opt.step()
                    total += float(loss.detach().mean()) * len(idx)
                sched.step()
                history[epoch] = total / n
        return history

    def _modality_dropout_plan(self, device: torch.device) -> dict[str, torch.Tensor] | None:
        """Which design columns each droppable group controls (None: nothing to drop)."""
        p = float(self.modality_dropout)
        # The combined anomaly summary exists whatever modalities a subject has.
        droppable = [k for k, grp in enumerate(self.groups_) if grp != "anomaly"]
        if p <= 0 or not droppable:
            return None
        F, G = len(self.feature_names_), len(self.groups_)
        group_of = np.array([self.groups_.index(feature_group(n)) for n in self.feature_names_])
        member = np.zeros((G, F + G), dtype=np.float32)  # group -> its value columns
        flag = np.zeros((G, F + G), dtype=np.float32)  # group -> its missing flag column
        for k in droppable:
            member[k, :F] = group_of == k
            flag[k, F + k] = 1.0
        n_glob = len(self.global_feature_names_)
        gmember = np.zeros((G, 2 * n_glob), dtype=np.float32)
        for j, name in enumerate(self.global_feature_names_):
            for k in droppable:  # e.g. global_cortical_pet_percent goes with "pet"
                if self.groups_[k] in name.split("_"):
                    gmember[k, j] = 1.0
                    gmember[k, n_glob + j] = -1.0  # marks the flag column
        as_t = lambda a: torch.as_tensor(a, device=device)
        return {"p": torch.tensor(p), "droppable": as_t(np.isin(np.arange(G), droppable).astype(np.float32)),
                "member": as_t(member), "flag": as_t(flag), "gmember": as_t(gmember)}

    @staticmethod
    def _drop_modalities(x: torch.Tensor, g: torch.Tensor | None,
                         plan: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hide random (bag, group) pairs as if the modality were missing."""
        n = x.shape[0]
        hidden = (torch.rand(n, plan["droppable"].numel(), device=x.device) < plan["p"]).float() * plan["droppable"]
        cols = (hidden @ plan["member"]).clamp_max(1.0)  # (N, F+G): value columns to zero
        flags = (hidden @ plan["flag"]).clamp_max(1.0)  # (N, F+G): flag columns to set
        # Value and flag columns are disjoint: values -> 0 (the training mean), flags -> 1.
        x = x * (1.0 - cols - flags)[:, None, :] + flags[:, None, :]
        if g is not None and g.shape[1]:
            gm = hidden @ plan["gmember"]
            values, flag_cols = (gm > 0).float(), (gm < 0).float()
            g = g * (1.0 - values - flag_cols) + flag_cols
        return x, g

    # ------------------------------------------------------------------ inference
    def _forward_eval(self, x: np.ndarray, g: np.ndarray | None, chunk: int = 256) -> dict[str, np.ndarray]:
        net = self.net_
        device = next(net.parameters()).device
        spec = LossSpec.parse(self.loss, self.loss_weights)
        head = spec.primary
        parts: dict[str, list[np.ndarray]] = {}
        net.eval()
        with torch.no_grad():
            for start in range(0, x.shape[0], chunk):
                xt = torch.as_tensor(x[start:start + chunk], device=device)
                gt = None if g is None else torch.as_tensor(g[start:start + chunk], device=device)
                out = self._outputs(net, xt, gt, spec)
                if head != "scalar":
                    out["probs"] = head_probabilities(head, out[head])
                for k in ("point", "attention", "probs"):
                    if k in out:
                        parts.setdefault(k, []).append(out[k].cpu().numpy().astype(np.float64))
        return {k: np.concatenate(v, axis=1) for k, v in parts.items()}

    def _raw_points(self, x: np.ndarray, g: np.ndarray | None) -> np.ndarray:
        return self._forward_eval(x, g)["point"]

    def predict_members(self, bags: RegionBags | np.ndarray) -> np.ndarray:
        """Each ensemble member's prediction, shape (S, N), clipped to 0..23."""
        x, g = self._design(self._check_bags(bags))
        raw = self._raw_points(x, g)
        pred = raw * self.calibration_[:, :1] + self.calibration_[:, 1:]
        return np.clip(pred, 0.0, CRS_MAX)

    def predict(self, bags: RegionBags | np.ndarray, return_std: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Predicted CRS-R (ensemble mean, continuous, in 0..23).

        Parameters
        ----------
        bags : RegionBags or array (N, R, F)
            Regions and features are matched to the training layout by index/name;
            features a subject lacks are treated as missing.
        return_std : bool, default=False
            Also return the ensemble SD (model uncertainty, not a prediction interval).
        """
        members = self.predict_members(bags)
        mean = members.mean(0)
        return (mean, members.std(0)) if return_std else mean

    def predict_distribution(self, bags: RegionBags | np.ndarray) -> np.ndarray:
        """Ensemble-mean probability of each level 0..23, shape (N, 24).

        Only for ordinal (CORAL, CORN) and softmax (kappa, soft-label) heads.
        """
        check_is_fitted(self, "net_")
        if LossSpec.parse(self.loss, self.loss_weights).primary == "scalar":
            raise ValueError(f"predict_distribution needs an ordinal or softmax loss, not {self.loss!r}")
        x, g = self._design(self._check_bags(bags))
        return self._forward_eval(x, g)["probs"].mean(0)

    def attention(self, bags: RegionBags | np.ndarray) -> np.ndarray:
        """Ensemble-mean attention over regions, shape (N, R); each row sums to 1."""
        x, g = self._design(self._check_bags(bags))
        return self._forward_eval(x, g)["attention"].mean(0)

    def n_parameters(self) -> int:
        """Trainable parameters of ONE ensemble member."""
        check_is_fitted(self, "net_")
        return int(sum(p[0].numel() for p in self.net_.parameters()))

    def __sklearn_tags__(self) -> Any:  # pragma: no cover - sklearn >= 1.6 metadata
        tags = super().__sklearn_tags__()
        tags.estimator_type = "regressor"
        tags.input_tags.allow_nan = True
        return tags
