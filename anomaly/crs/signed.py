"""The signed MIL network: few parameters, damage that only ever lowers the CRS-R.

Inputs are oriented so that a larger value always means more damage (see
:func:`anomaly.crs.features.damage_sign`): the regressor's design gives, per region,
``F`` damage values (standardised per region; 0 = the training cohort's mean for that
region, also used for a missing value) and one missing fraction per modality group,
and per subject ``G`` damage-oriented global values (e.g. the global cortical PET
level, sign flipped) and their ``G`` missing flags.

One member computes, for ``K`` channels ``k``:

* an instance encoder that sees the global level (so that "damage given the global
  level" can be formed per region)::

      h[r, k] = softplus( d[r] . W_d[:, k] + m[r] . W_m[:, k] + dg . W_g[:, k] + mg . W_mg[:, k] + b[k] )

  with ``W_d, W_g >= 0`` (softplus of free weights): ``h`` never decreases with damage
  (a feature without a known direction, e.g. a column of an unnamed array, keeps a free
  weight and no constraint);
* log-sum-exp attention pooling per channel, with a region prior ``rho[r, k]``::

      z[k] = (1 / tau_k) log sum_r exp(rho[r, k] + tau_k h[r, k]) - (1 / tau_k) log sum_r exp(rho[r, k])

  ``z`` is non-decreasing in every ``h`` (its gradient is the attention
  ``a[r, k] = softmax_r(rho[r, k] + tau_k h[r, k])``); a small ``tau`` makes it the
  weighted mean of the regions (independent regional effects add), a large one the
  worst region. ``K`` channels let several independent effects (arousal, awareness)
  add in the head;
* the region prior ``rho`` is a tiny MLP of fixed region descriptors
  (:mod:`anomaly.crs.regions`: centroid, deep/cortical, volume), or, for an atlas
  the toolkit does not ship, of a small learned embedding, plus (optionally) the
  arousal and awareness families on the first two channels with a learned gain;
* heads that map ``[z, dg, mg]`` to the outputs with weights ``<= 0`` on ``z`` and
  ``dg`` for the heads whose output increases with the CRS-R (the scalar score and
  the CORAL / CORN logits): more damage never raises the prediction. The softmax head
  (kappa, soft labels) has no order to constrain and keeps free weights.

About 150 parameters per member for 6 features, against ~950 for the gated network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomaly.constants import CRS_LEVELS, CRS_MAX

__all__ = ["SIGNED_HEADS", "SignedMILNet"]

#: Heads whose output increases with the CRS-R, hence sign-constrained.
SIGNED_HEADS = ("scalar", "coral", "corn")
_HEAD_OUT = {"scalar": 1, "coral": CRS_MAX, "corn": CRS_MAX, "softmax": CRS_LEVELS}
# Upper bound of the pooling temperatures: beyond it LSE pooling is a hard max.
_TAU_MAX = 8.0
# Initial temperature: 8 sigmoid(-3) = 0.38, close to a weighted mean of the regions
# (starting near a max, the pooled value follows one noisy region and training stalls).
_TAU_INIT_LOGIT = -3.0


def _uniform(gen: torch.Generator, shape: Sequence[int], bound: float) -> torch.Tensor:
    return (torch.rand(*shape, generator=gen) * 2.0 - 1.0) * bound


def _constrained(raw: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Weights >= 0 (softplus of the raw ones), except the rows marked free (raw + 2,
    so that a free weight starts near 0 like the constrained ones start small)."""
    return torch.where(free[:, None], raw + 2.0, F.softplus(raw))


class SignedMILNet(nn.Module):
    """One member of the signed MIL regressor (see the module docstring).

    Parameters
    ----------
    n_values : int
        Damage-oriented instance features ``F``.
    free_values : tensor of bool (F,), optional
        Values whose damage direction is unknown (a feature without a known sign,
        e.g. a column of an unnamed array): their weights are free, not constrained.
    free_globals : tensor of bool (G,), optional
        The same for the global values.
    n_flags : int
        Instance missing-fraction columns (after the ``F`` values).
    n_globals : int
        Global columns ``2G`` (``G`` damage values, then ``G`` missing flags); 0 for none.
    channels : int
        Channels ``K`` (instance encoder units, each pooled by its own attention).
    descriptors : tensor (R, D) or None
        Fixed region descriptors (None: only the learned embedding).
    n_regions : int
        Number of regions ``R``.
    region_embedding : int
        Size of a learned per-region embedding given to the region prior next to the
        descriptors (at least 2 without descriptors).
    prior_offset : tensor (R, K), optional
        Fixed prior logits (:func:`anomaly.crs.regions.hypothesis_prior`) added to the
        learned prior with a learned gain per channel (starting at 1).
    product_head : bool, default=False
        The scalar head gives two sign-constrained scores and returns
        ``log sigmoid(s_1) + log sigmoid(s_2)`` (the regressor's
        ``"arousal-awareness"`` link turns it into ``23 x exp(.)``).
    prior_hidden : int
        Hidden units of the region-prior MLP.
    heads : sequence of str
    seed : int
        Initialisation seed.
    dropout : float, default=0.0
        Rate of the channel-dropout mask given to :meth:`forward`.
    """

    def __init__(self, *, n_values: int, free_values: torch.Tensor | None = None,
                 free_globals: torch.Tensor | None = None, n_flags: int, n_globals: int, channels: int,
                 descriptors: torch.Tensor | None, n_regions: int, region_embedding: int, prior_hidden: int,
                 prior_offset: torch.Tensor | None = None, product_head: bool = False,
                 heads: Sequence[str], seed: int, dropout: float = 0.0) -> None:
        super().__init__()
        K, G = channels, n_globals // 2
        self.heads = list(heads)
        self.n_values, self.n_flags, self.n_global_values = n_values, n_flags, G
        self.dropout = float(dropout)
        gen = torch.Generator().manual_seed(int(seed))
        fan = max(n_values + G, 1)

        def add(name: str, tensor: torch.Tensor) -> None:
            self.register_parameter(name, nn.Parameter(tensor))

        # softplus(-2 + noise) ~ 0.13: every damage input starts with a small positive
        # weight, small enough that the log-link score does not start saturated.
        add("w_damage", -2.0 + _uniform(gen, (n_values, K), 0.5))
        free_v = torch.zeros(n_values, dtype=torch.bool) if free_values is None else torch.as_tensor(free_values)
        free_g = torch.zeros(G, dtype=torch.bool) if free_globals is None else torch.as_tensor(free_globals)
        self.register_buffer("free_values", free_v.to(torch.bool), persistent=False)
        self.register_buffer("free_globals", free_g.to(torch.bool), persistent=False)
        add("w_flags", _uniform(gen, (n_flags, K), 1.0 / math.sqrt(max(n_flags, 1))))
        add("w_global", -2.0 + _uniform(gen, (G, K), 0.5))
        add("w_global_flags", _uniform(gen, (G, K), 1.0 / math.sqrt(max(G, 1))))
        add("b_in", _uniform(gen, (K,), 1.0 / math.sqrt(fan)))
        add("log_tau", torch.full((K,), float(_TAU_INIT_LOGIT)))
        n_embed = max(int(region_embedding), 2 if descriptors is None else 0)
        n_desc = n_embed
        if n_embed:
            add("region_embedding", 0.1 * torch.randn(n_regions, n_embed, generator=gen))
        if descriptors is not None:
            self.register_buffer("descriptors", torch.as_tensor(descriptors, dtype=torch.float32), persistent=False)
            n_desc += int(descriptors.shape[1])
        add("prior_w1", _uniform(gen, (n_desc, prior_hidden), 1.0 / math.sqrt(n_desc)))
        add("prior_b1", _uniform(gen, (prior_hidden,), 1.0 / math.sqrt(n_desc)))
        add("prior_w2", _uniform(gen, (prior_hidden, K), 1.0 / math.sqrt(prior_hidden)))
        if prior_offset is not None:
            self.register_buffer("prior_offset", torch.as_tensor(prior_offset, dtype=torch.float32), persistent=False)
            add("prior_gain", torch.ones(K))
        D = K + 2 * G
        self.product_head = bool(product_head)
        for head in self.heads:
            n_w = 1 if head in ("coral", "corn") else _HEAD_OUT[head]
            if head == "scalar" and self.product_head:
                n_w = 2
            if head in SIGNED_HEADS:
                # Weights on [z, dg] stored as free numbers w and used as -softplus(w).
                # Ordinal logits need steeper slopes than the log-link score: start them
                # at softplus(0) ~ 0.7 rather than ~0.13.
                start = -2.0 if head == "scalar" else 0.0
                add(f"{head}_weight", start + _uniform(gen, (K + G, n_w), 0.5))
                add(f"{head}_flag_weight", _uniform(gen, (G, n_w), 0.5))
            else:
                add(f"{head}_weight", _uniform(gen, (D, n_w), 1.0 / math.sqrt(D)))
            add(f"{head}_bias", torch.zeros(n_w if head == "scalar" else _HEAD_OUT[head]))

    def region_prior(self) -> torch.Tensor:
        """Prior attention logits ``rho`` (R, K)."""
        parts = [getattr(self, name) for name in ("descriptors", "region_embedding") if hasattr(self, name)]
        e = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        rho = torch.tanh(e @ self.prior_w1 + self.prior_b1) @ self.prior_w2
        if hasattr(self, "prior_offset"):
            rho = rho + self.prior_gain * self.prior_offset
        return rho

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Forward pass of one member.

        Parameters
        ----------
        x : tensor (N, R, F + n_flags)
        g : tensor (N, 2G), optional
        keep : tensor (N, 1, K), optional
            Channel-dropout mask of 0/1 (training only).

        Returns
        -------
        dict
            ``attention`` (N, R): the channels' attentions weighted by how much each
            channel moves the primary head; one entry per head.
        """
        F_, G = self.n_values, self.n_global_values
        w_damage = _constrained(self.w_damage, self.free_values)
        pre = x[..., :F_] @ w_damage + x[..., F_:] @ self.w_flags + self.b_in
        if G:
            dg, mg = g[:, :G], g[:, G:]
            w_global = _constrained(self.w_global, self.free_globals)
            pre = pre + (dg @ w_global + mg @ self.w_global_flags)[:, None, :]
        h = F.softplus(pre)  # (N, R, K)
        if keep is not None:
            h = h * keep / (1.0 - self.dropout)
        tau = _TAU_MAX * torch.sigmoid(self.log_tau)  # in (0, 8)
        rho = self.region_prior()  # (R, K)
        logits = rho[None] + tau * h
        z = (torch.logsumexp(logits, dim=1) - torch.logsumexp(rho, dim=0)[None]) / tau  # (N, K)
        channel_attention = torch.softmax(logits, dim=1)  # (N, R, K)
        inputs = z if not G else torch.cat([z, dg], dim=-1)
        out: dict[str, torch.Tensor] = {}
        importance = None
        for head in self.heads:
            w = getattr(self, f"{head}_weight")
            if head in SIGNED_HEADS:
                w_pos = F.softplus(w)
                value = -(inputs @ w_pos) + getattr(self, f"{head}_bias")
                if G:
                    value = value + mg @ getattr(self, f"{head}_flag_weight")
                if importance is None:
                    importance = w_pos[: z.shape[1]].sum(-1)
            else:
                full = z if not G else torch.cat([z, dg, mg], dim=-1)
                value = full @ w + getattr(self, f"{head}_bias")
                if importance is None:
                    importance = w[: z.shape[1]].abs().sum(-1)
            if head == "scalar":
                value = F.logsigmoid(value).sum(-1) if self.product_head else value[..., 0]
            out[head] = value
        share = importance / importance.sum().clamp_min(1e-12)
        out["attention"] = torch.einsum("nrk,k->nr", channel_attention, share)
        return out
