"""Easy-to-hard curricula with linear pacing, and the random-order control.

A curriculum is an *order* of the training bags (easiest first) plus a *pacing*
function: at epoch ``e`` only the first ``n_e`` bags of the order contribute to the
loss. The "random" control draws the order at random but keeps exactly the same sizes
``n_e``, so that any benefit of a curriculum can be told apart from the benefit of
training on a growing subset.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CURRICULA", "confidence_difficulty", "curriculum_masks", "curriculum_order", "pacing_sizes"]

CURRICULA = ("confidence", "self-paced", "random")


def pacing_sizes(n: int, epochs: int, *, start: float = 0.4, ramp: float = 0.5) -> np.ndarray:
    """Number of training bags used at each epoch (linear pacing).

    Grows linearly from ``ceil(start * n)`` at epoch 0 to ``n`` at epoch
    ``ramp * epochs``, then stays at ``n``.

    Parameters
    ----------
    n : int
        Training set size.
    epochs : int
    start : float in (0, 1]
        Initial fraction.
    ramp : float in (0, 1]
        Fraction of the epochs over which the set grows.

    Returns
    -------
    ndarray of int (epochs,)
        Non-decreasing sizes ending at ``n``.
    """
    if not 0 < start <= 1 or not 0 < ramp <= 1:
        raise ValueError(f"curriculum: start and ramp must be in (0, 1], got {start}, {ramp}")
    if n <= 0 or epochs <= 0:
        return np.zeros(max(epochs, 0), dtype=int)
    n0 = max(1, int(np.ceil(start * n)))
    end = max(1, int(round(ramp * epochs)))  # noqa: RUF046 - numpy floats round to floats
    frac = np.clip(np.arange(epochs) / end, 0.0, 1.0)
    sizes = np.ceil(n0 + frac * (n - n0)).astype(int)
    return np.clip(sizes, n0, n)


def confidence_difficulty(y: np.ndarray, y_sd: np.ndarray | None = None, *, cut: float = 8.0) -> np.ndarray:
    """Difficulty from label confidence (lower = easier).

    With per-patient label SDs (``crs_sd``) the difficulty is the SD: precisely rated
    patients first. Without them (or to break ties), labels far from the UWS/MCS
    decision boundary (``cut - 0.5``) are the confident ones: a rater is unlikely to
    confuse a 2 with an 8, while 7 vs 8 is exactly where single examinations disagree.
    """
    y = np.asarray(y, dtype=float)
    boundary = -np.abs(y - (cut - 0.5))  # near the boundary -> high difficulty
    if y_sd is None:
        return boundary
    sd = np.asarray(y_sd, dtype=float)
    if not np.isfinite(sd).any():
        return boundary
    sd = np.where(np.isfinite(sd), sd, np.nanmedian(sd))
    # Lexicographic: SD first, boundary distance breaks ties (scaled to stay below
    # the smallest SD step).
    span = np.ptp(boundary) or 1.0
    steps = np.diff(np.unique(sd))
    eps = (steps.min() if steps.size else 1.0) * 0.5
    return sd + eps * (boundary - boundary.min()) / span


def curriculum_order(kind: str, *, y: np.ndarray, y_sd: np.ndarray | None = None,
                     sample_loss: np.ndarray | None = None, cut: float = 8.0,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Order of the training bags, easiest first.

    Parameters
    ----------
    kind : {"confidence", "self-paced", "random"}
        ``"confidence"``: :func:`confidence_difficulty`. ``"self-paced"``: ascending
        ``sample_loss`` (the per-bag loss of a first, quickly fitted model; bags it
        already fits are "easy"). ``"random"``: a random permutation (the control).
    rng : numpy Generator, optional
        Breaks ties and draws the random order.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    n = len(y)
    tiebreak = rng.permutation(n)
    if kind == "random":
        return rng.permutation(n)
    if kind == "confidence":
        difficulty = confidence_difficulty(y, y_sd, cut=cut)
    elif kind == "self-paced":
        if sample_loss is None:
            raise ValueError("curriculum 'self-paced' needs sample_loss")
        difficulty = np.asarray(sample_loss, dtype=float)
    else:
        raise ValueError(f"curriculum: unknown kind {kind!r}; choose from {', '.join(CURRICULA)} or None")
    return np.lexsort((tiebreak, difficulty))


def curriculum_masks(order: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Boolean ``(epochs, n)`` masks: bag ``order[:sizes[e]]`` is used at epoch ``e``."""
    order = np.asarray(order)
    n = order.size
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    return rank[None, :] < np.asarray(sizes)[:, None]
