"""Training losses for the CRS-R regressor, written from their defining formulas.

Every loss takes network outputs with a leading *ensemble member* axis ``S`` (the
ensemble is trained as one vectorised model), the labels ``y`` (N,) on the 0..23
scale and per-sample weights ``w`` (N,) (label-distribution smoothing and the
curriculum mask: a weight of 0 removes a sample, including from pairs and from the
kappa confusion matrix). Each returns one loss per member, shape (S,).

Output heads ("what the loss needs"):

``scalar``  one standardised score per bag; prediction = mean_y + sd_y * score.
``coral``   K-1 logits sharing one weight vector, one bias per threshold (Cao et al.
            2020); P(y > k) = sigmoid(logit_k); prediction = sum_k P(y > k).
``corn``    K-1 conditional logits (Shi et al. 2023; here too with one shared weight
            vector and K-1 biases, for small cohorts); P(y > k | y > k-1) =
            sigmoid(logit_k); P(y > k) = prod_{j<=k} sigmoid(logit_j);
            prediction = sum_k P(y > k).
``softmax`` K logits; prediction = sum_k k * p_k (expected value).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from anomaly.constants import CRS_LEVELS

__all__ = [
    "LOSSES",
    "N_LEVELS",
    "LossSpec",
    "coral_loss",
    "coral_point",
    "corn_loss",
    "corn_point",
    "gaussian_label_distribution",
    "head_probabilities",
    "huber_loss",
    "kappa_loss",
    "lds_weights",
    "mae_loss",
    "mse_loss",
    "parse_loss",
    "rank_loss",
    "soft_label_loss",
    "softmax_point",
]

#: CRS-R total score levels 0..23 (alias of :data:`anomaly.constants.CRS_LEVELS`).
N_LEVELS = CRS_LEVELS

#: loss name -> output head it trains ("rank" uses the primary head's prediction).
LOSSES: dict[str, str | None] = {
    "mse": "scalar",
    "mae": "scalar",
    "huber": "scalar",
    "coral": "coral",
    "corn": "corn",
    "rank": None,
    "kappa": "softmax",
    "soft": "softmax",
}
_ALIASES = {"l2": "mse", "l1": "mae", "qwk": "kappa", "ranknet": "rank", "ranking": "rank", "soft_labels": "soft",
            "softlabel": "soft", "softlabels": "soft", "smoothl1": "huber"}


def parse_loss(spec: str | Mapping[str, float], loss_weights: Mapping[str, float] | None = None) -> list[tuple[str, float]]:
    """Parse a loss specification into ``[(name, weight), ...]``.

    Parameters
    ----------
    spec : str or mapping
        ``"mse"``, ``"coral+rank"``, ``"mse:1,rank:0.5"`` (``+`` and ``,`` both
        separate terms; ``name:weight`` sets a weight, default 1), or a mapping
        ``{name: weight}``.
    loss_weights : mapping, optional
        Weights that override those in ``spec``.

    Examples
    --------
    >>> parse_loss("coral+rank:0.5")
    [('coral', 1.0), ('rank', 0.5)]
    """
    if isinstance(spec, Mapping):
        items = [(str(k), float(v)) for k, v in spec.items()]
    else:
        items = []
        for part in re.split(r"[+,]", str(spec)):
            part = part.strip()
            if not part:
                continue
            name, _, weight = part.partition(":")
            try:
                items.append((name.strip(), float(weight) if weight.strip() else 1.0))
            except ValueError:
                raise ValueError(f"loss: bad weight in {part!r} (expected name:number)") from None
    out: list[tuple[str, float]] = []
    for name, weight in items:
        key = _ALIASES.get(name.lower(), name.lower())
        if key not in LOSSES:
            raise ValueError(f"loss: unknown loss {name!r}; choose from {', '.join(LOSSES)}")
        if loss_weights and key in loss_weights:
            weight = float(loss_weights[key])
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"loss: weight of {name!r} must be a non-negative number, got {weight}")
        if any(k == key for k, _ in out):
            raise ValueError(f"loss: {name!r} given twice")
        out.append((key, weight))
    if not out:
        raise ValueError(f"loss: empty specification {spec!r}")
    if loss_weights:
        unknown = {_ALIASES.get(k, k) for k in loss_weights} - {k for k, _ in out}
        if unknown:
            raise ValueError(f"loss_weights: {', '.join(sorted(unknown))} not in loss {spec!r}")
    if sum(w for _, w in out) <= 0:
        raise ValueError("loss: all weights are zero")
    return out


# --------------------------------------------------------------------------- helpers
def _wmean(per_sample: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted mean over the last axis; per_sample (S, N), w (N,) -> (S,)."""
    return (per_sample * w).sum(-1) / w.sum().clamp_min(1e-12)


def _bce_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # -[t log s(l) + (1 - t) log(1 - s(l))], written with softplus for stability:
    # -log s(l) = softplus(-l), -log(1 - s(l)) = softplus(l).
    return target * F.softplus(-logits) + (1.0 - target) * F.softplus(logits)


def _levels(n_levels: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(n_levels, dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------- losses
def mse_loss(score: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted mean squared error; ``score`` (S, N) and ``target`` (N,) on one scale."""
    return _wmean((score - target) ** 2, w)


def mae_loss(score: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted mean absolute error (the median regression the CRS-R's MAE scores)."""
    return _wmean((score - target).abs(), w)


def huber_loss(score: torch.Tensor, target: torch.Tensor, w: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Weighted Huber loss: quadratic for ``|r| <= delta``, linear beyond.

    ``0.5 r^2`` if ``|r| <= delta`` else ``delta (|r| - delta / 2)``; robust to the
    occasional grossly mislabelled patient.
    """
    r = (score - target).abs()
    per = torch.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta))
    return _wmean(per, w)


def coral_loss(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """CORAL ordinal loss: K-1 binary tasks ``y > k`` summed, weighted mean over bags.

    Parameters
    ----------
    logits : tensor (S, N, K-1)
    y : tensor (N,)
        Integer-valued labels in 0..K-1.
    w : tensor (N,)
    """
    k = _levels(logits.shape[-1], logits)
    target = (y[:, None] > k).to(logits.dtype)  # (N, K-1)
    return _wmean(_bce_logits(logits, target).sum(-1), w)


def corn_loss(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """CORN conditional ordinal loss.

    Task ``k`` is trained only on bags with ``y >= k`` (i.e. ``y > k-1``) to predict
    ``y > k``; the loss is the (weighted) mean over all included (bag, task) pairs.
    """
    k = _levels(logits.shape[-1], logits)
    include = (y[:, None] >= k).to(logits.dtype) * w[:, None]  # (N, K-1)
    target = (y[:, None] > k).to(logits.dtype)
    per = _bce_logits(logits, target) * include
    return per.sum((-2, -1)) / include.sum().clamp_min(1e-12)


def rank_loss(score: torch.Tensor, y: torch.Tensor, w: torch.Tensor, *, sigma: float = 1.0,
              margin: float | None = None) -> torch.Tensor:
    """Pairwise ranking loss over all pairs with different labels.

    RankNet (Burges et al. 2005): for every pair with ``y_i > y_j`` the probability
    that ``i`` ranks above ``j`` is ``sigmoid((s_i - s_j) / sigma)`` and the loss is
    its negative log, ``softplus(-(s_i - s_j) / sigma)``. With ``margin`` the hinge
    ``max(0, margin - (s_i - s_j))`` is used instead. Pairs are weighted by
    ``w_i w_j``. The loss ignores location and scale, so a model trained only with it
    is calibrated afterwards (see :class:`~anomaly.crs.MILRegressor`).
    """
    diff = score[..., :, None] - score[..., None, :]  # (S, N, N): s_i - s_j
    pair = (y[:, None] > y[None, :]).to(score.dtype) * (w[:, None] * w[None, :])
    per = F.relu(margin - diff) if margin is not None else F.softplus(-diff / sigma)
    return (per * pair).sum((-2, -1)) / pair.sum().clamp_min(1e-12)


def kappa_loss(probs: torch.Tensor, y: torch.Tensor, w: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Differentiable quadratic-weighted-kappa loss ``1 - QWK`` (de la Torre et al. 2018).

    With soft predictions the confusion matrix is ``O_ij = sum_n w_n [y_n = i] p_nj``,
    the chance matrix ``E_ij = (sum_n w_n [y_n = i]) (sum_n w_n p_nj) / sum_n w_n`` and
    the weights ``W_ij = (i - j)^2 / (K - 1)^2``. Then ``QWK = 1 - sum(W O) / sum(W E)``,
    so the loss ``1 - QWK = sum(W O) / sum(W E)``; for one-hot predictions it is exactly
    one minus the usual kappa.

    Parameters
    ----------
    probs : tensor (S, N, K)
        Class probabilities (softmax outputs).
    """
    n_levels = probs.shape[-1]
    k = _levels(n_levels, probs)
    onehot = (y[:, None] == k).to(probs.dtype) * w[:, None]  # (N, K)
    observed = torch.einsum("ni,snj->sij", onehot, probs)
    hist_true = onehot.sum(0)  # (K,)
    hist_pred = torch.einsum("n,snj->sj", w, probs)  # (S, K)
    expected = hist_true[None, :, None] * hist_pred[:, None, :] / w.sum().clamp_min(1e-12)
    weights = (k[:, None] - k[None, :]) ** 2 / (n_levels - 1) ** 2
    return (weights * observed).sum((-2, -1)) / ((weights * expected).sum((-2, -1)) + eps)


def gaussian_label_distribution(y: torch.Tensor, sd: torch.Tensor, n_levels: int = N_LEVELS) -> torch.Tensor:
    """Discretised Gaussian label distribution ``q_k ∝ exp(-(k - y)^2 / (2 sd^2))`` (N, K)."""
    k = _levels(n_levels, y.to(torch.float32))
    sd = sd.clamp_min(1e-3)
    logq = -((k[None, :] - y[:, None].to(k.dtype)) ** 2) / (2.0 * sd[:, None] ** 2)
    return torch.softmax(logq, dim=-1)


def soft_label_loss(logits: torch.Tensor, y: torch.Tensor, sd: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a Gaussian label distribution (label-noise aware).

    ``-sum_k q_k log p_k`` with ``q`` from :func:`gaussian_label_distribution` (SD =
    the patient's label noise) and ``p = softmax(logits)``.
    """
    q = gaussian_label_distribution(y, sd, logits.shape[-1]).to(logits.dtype)
    return _wmean(-(q * torch.log_softmax(logits, dim=-1)).sum(-1), w)


# --------------------------------------------------------------------------- heads
def coral_point(logits: torch.Tensor) -> torch.Tensor:
    """Prediction of a CORAL head: ``sum_k P(y > k)``."""
    return torch.sigmoid(logits).sum(-1)


def corn_point(logits: torch.Tensor) -> torch.Tensor:
    """Prediction of a CORN head: ``sum_k prod_{j<=k} sigmoid(logit_j)``."""
    return torch.cumprod(torch.sigmoid(logits), dim=-1).sum(-1)


def softmax_point(logits: torch.Tensor) -> torch.Tensor:
    """Prediction of a softmax head: the expected level ``sum_k k p_k``."""
    p = torch.softmax(logits, dim=-1)
    return (p * _levels(p.shape[-1], p)).sum(-1)


def head_probabilities(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Level probabilities ``(..., K)`` of an ordinal or softmax head."""
    if kind == "softmax":
        return torch.softmax(logits, dim=-1)
    if kind == "coral":
        exceed = torch.sigmoid(logits)
    elif kind == "corn":
        exceed = torch.cumprod(torch.sigmoid(logits), dim=-1)
    else:
        raise ValueError(f"no level distribution for a {kind!r} head")
    ones = torch.ones_like(exceed[..., :1])
    zeros = torch.zeros_like(exceed[..., :1])
    # P(y = k) = P(y > k-1) - P(y > k); CORAL thresholds may cross slightly, so clamp.
    p = (torch.cat([ones, exceed], -1) - torch.cat([exceed, zeros], -1)).clamp_min(0.0)
    return p / p.sum(-1, keepdim=True).clamp_min(1e-12)


@dataclass
class LossSpec:
    """A weighted combination of losses and the heads it needs.

    Parameters
    ----------
    terms : list of (name, weight)
        From :func:`parse_loss`.
    """

    terms: list[tuple[str, float]]

    @classmethod
    def parse(cls, spec: str | Mapping[str, float], loss_weights: Mapping[str, float] | None = None) -> LossSpec:
        return cls(parse_loss(spec, loss_weights))

    @property
    def heads(self) -> list[str]:
        """Heads in order of first use; the first one gives the point prediction."""
        out: list[str] = []
        for name, _ in self.terms:
            head = LOSSES[name]
            if head is not None and head not in out:
                out.append(head)
        return out or ["scalar"]  # rank alone ranks a scalar score

    @property
    def primary(self) -> str:
        return self.heads[0]

    @property
    def scale_free(self) -> bool:
        """True if nothing pins the location/scale of the prediction (rank only)."""
        return all(name == "rank" for name, _ in self.terms)

    def __call__(self, out: Mapping[str, torch.Tensor], y: torch.Tensor, w: torch.Tensor, *,
                 y_mean: float, y_scale: float, sd: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the terms, one value per ensemble member (S,).

        ``out`` holds the head outputs (``scalar`` standardised, logits otherwise) and
        ``point`` (S, N), the primary head's prediction on the label scale.
        """
        total = 0.0
        y_std = (y - y_mean) / y_scale
        for name, weight in self.terms:
            if weight == 0:
                continue
            if name == "mse":
                term = mse_loss(out["scalar"], y_std, w)
            elif name == "mae":
                term = mae_loss(out["scalar"], y_std, w)
            elif name == "huber":
                term = huber_loss(out["scalar"], y_std, w)
            elif name == "coral":
                term = coral_loss(out["coral"], y, w)
            elif name == "corn":
                term = corn_loss(out["corn"], y, w)
            elif name == "kappa":
                term = kappa_loss(torch.softmax(out["softmax"], -1), y, w)
            elif name == "soft":
                term = soft_label_loss(out["softmax"], y, sd, w)
            else:  # rank: on the primary prediction, standardised so sigma=1 is sensible
                term = rank_loss((out["point"] - y_mean) / y_scale, y, w)
            total = total + weight * term
        return total  # type: ignore[return-value]


# --------------------------------------------------------------------------- imbalance
def lds_weights(y: np.ndarray, *, n_levels: int = N_LEVELS, sigma: float = 2.0, power: float = 0.5) -> np.ndarray:
    """Label-distribution-smoothing sample weights (Yang et al. 2021).

    The empirical label histogram over 0..K-1 is convolved with a Gaussian kernel
    (SD ``sigma`` levels) to get an effective density; each sample is weighted by
    ``density(y_i) ** -power`` (``power=0.5``: inverse square root, ``1``: inverse),
    normalised to mean 1 so that the learning rate keeps its meaning.

    Parameters
    ----------
    y : array (N,)
        Labels (rounded and clipped to 0..K-1 for the histogram).

    Returns
    -------
    ndarray (N,)
        Weights; rare labels get larger weights.
    """
    y = np.clip(np.rint(np.asarray(y, dtype=float)), 0, n_levels - 1).astype(int)
    if y.size == 0:
        return np.ones(0)
    hist = np.bincount(y, minlength=n_levels).astype(float)
    levels = np.arange(n_levels)
    kernel = np.exp(-((levels[:, None] - levels[None, :]) ** 2) / (2.0 * max(sigma, 1e-6) ** 2))
    density = kernel @ hist  # smoothed count at every level
    w = density[y] ** (-float(power))
    return w / w.mean()
