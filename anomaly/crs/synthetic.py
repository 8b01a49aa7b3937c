"""Synthetic region tables with a known CRS-R generating model (tests and benchmarks).

The simulator of the toolkit (:mod:`anomaly.simulate`) produces images; this module
skips the images and builds *region tables* directly, shaped like those written by
`anomaly score`, so that the CRS-R regressor can be tested and benchmarked in seconds.

Generating model (documented so that results can be judged against it)
-----------------------------------------------------------------------
* Severity ``u ~ Beta(1.2, 1.8)`` per patient (skewed to severe: many low scores).
* Causal regions (arousal network: brainstem, thalami; posteromedial cortex: precuneus,
  posterior cingulate; frontal: superior/middle/medial superior frontal gyri) get a
  damage ``d_k = clip(u * (0.5 + Beta(2, 2)) + N(0, 0.1), 0, 1.2)``; their PET region
  mean z is ``-3 d_k + N(0, 0.3)``; MRI is mildly affected (T1w ``-d_k``, FLAIR
  ``+1.2 d_k``).
* Every patient also has 2-6 *distractor* lesions in random non-causal regions
  (strong T1w/FLAIR/PET abnormality) unrelated to the score, and healthy variation
  ``N(0, 0.35)`` everywhere, plus a patient-level PET offset ``N(0, 0.3)``.
* ``c`` = mean PET z over the causal regions (as observed in the table);
  ``crs_true = 23 * sigmoid(1.9 (c + 1.4))``.
* ``crs = clip(round(crs_true + N(0, sd_i)), 0, 23)`` with a per-patient label-noise
  SD ``sd_i ~ U(1, 2)`` (mean 1.5), reported as ``crs_sd``.
* Region statistics follow a unit-variance voxel z inside each region: ``p05/p95 =
  mean -/+ 1.645 + noise``, ``frac_absz_gt2`` and ``frac_z_lt_m2`` from the normal
  CDF; ``anomaly_mean`` averages the lesion-direction part of each modality
  (T1w -, FLAIR +, pet -); ``pet_focal_z_mean`` subtracts the subject's mean cortical
  PET z, and ``global_cortical_pet_percent = 100 (1 + 0.12 * mean cortical PET z)``.
* Missing modalities: FLAIR 10%, T1w 5%, PET 4% of patients ("n/a" columns).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import norm

from anomaly.constants import CRS_MAX, LESION_SIGN, SPACE

from .features import RegionBags

__all__ = ["CAUSAL_PATTERNS", "SyntheticCohort", "simulate_region_bags", "write_scores_dir"]

CAUSAL_PATTERNS = ("Brain_Stem", "Thalamus", "PCu_precuneus", "PCgG_posterior_cingulate",
                   "SFG_superior_frontal", "MFG_middle_frontal", "MSFG_superior_frontal")
MODALITIES = ("T1w", "FLAIR", "pet")


@dataclass
class SyntheticCohort:
    """A simulated cohort: bags, noisy labels and the ground truth."""

    bags: RegionBags
    crs: np.ndarray  # noisy integer labels
    crs_true: np.ndarray  # noise-free score
    crs_sd: np.ndarray  # per-patient label-noise SD
    causal: np.ndarray  # bool (R,): causal regions

    @property
    def participants(self) -> pd.DataFrame:
        """participants.tsv rows (patients only)."""
        n = len(self.crs)
        return pd.DataFrame({
            "participant_id": self.bags.participant_ids, "group": ["patient"] * n,
            "age": np.full(n, 50.0), "sex": ["F" if i % 2 else "M" for i in range(n)],
            "crs": pd.array(self.crs.astype(int), dtype="Int64"), "crs_sd": self.crs_sd,
        })


def _atlas_regions(n_regions: int | None) -> tuple[np.ndarray, list[str]]:
    """Neuromorphometrics labels from the shipped atlas table (generic if unavailable)."""
    here = Path(__file__).resolve()
    for root in (here.parents[2] / "atlases", here.parents[1] / "atlases"):
        tsv = root / "atlas-neuromorphometrics_dseg.tsv"
        if tsv.is_file():
            df = pd.read_csv(tsv, sep="\t")
            index, names = df["index"].to_numpy(), df["name"].astype(str).tolist()
            if n_regions is None or n_regions >= len(names):
                return index, names
            # A third causal regions (at least one), the rest others, in atlas order.
            causal = [i for i, n in enumerate(names) if any(p in n for p in CAUSAL_PATTERNS)]
            other = [i for i in range(len(names)) if i not in causal]
            n_causal = max(1, min(len(causal), n_regions // 3))
            keep = sorted(causal[:n_causal] + other[: n_regions - n_causal])
            return index[keep], [names[i] for i in keep]
    n = 136 if n_regions is None else n_regions
    names = [f"Region_{i:03d}" for i in range(n)]
    for j, p in enumerate(CAUSAL_PATTERNS[: max(1, n // 10)]):
        names[j * 7 % n] = f"Left_{p}"
    return np.arange(1, n + 1), names


def _region_kinds(region_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Causal regions (arousal network, mesocircuit, posteromedial cortex) and cortical ones."""
    causal = np.array([any(p in n for p in CAUSAL_PATTERNS) for n in region_names])
    cortical = np.array(["_" in n and n.split("_", 1)[0] in ("Left", "Right") and not any(
        t in n for t in ("Thalamus", "Caudate", "Putamen", "Pallidum", "Accumbens", "Amygdala", "Hippocampus",
                         "Ventricle", "White", "Cerebell", "Lat_Vent", "Inf_Lat", "Ventral_DC", "vessel")) for n in region_names])
    if not cortical.any():
        cortical = ~causal
    return causal, cortical


def _damage(rng: np.random.Generator, n: int, causal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Causal damage (driven by one severity per patient) and distractor lesions, (N, R) each."""
    R = causal.size
    u = rng.beta(1.2, 1.8, size=n)
    damage = np.zeros((n, R))
    damage[:, causal] = np.clip(u[:, None] * (0.5 + rng.beta(2, 2, size=(n, causal.sum())))
                                + rng.normal(0, 0.1, size=(n, causal.sum())), 0, 1.2)
    distract = np.zeros((n, R))
    non_causal = np.flatnonzero(~causal)
    for i in range(n):
        hit = rng.choice(non_causal, size=min(non_causal.size, rng.integers(2, 7)), replace=False)
        distract[i, hit] = rng.uniform(0.8, 1.5, size=hit.size)
    return damage, distract


def _modality_features(rng: np.random.Generator, mean_z: dict[str, np.ndarray],
                       cortical: np.ndarray) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Region-table columns of each modality and its part of the combined anomaly map."""
    n, R = mean_z["pet"].shape
    feats: dict[str, np.ndarray] = {}
    anomaly_parts = []
    for m in MODALITIES:
        mu = mean_z[m]
        feats[f"{m}_z_mean"] = mu
        feats[f"{m}_z_p05"] = mu - 1.645 + rng.normal(0, 0.1, (n, R))
        feats[f"{m}_z_p95"] = mu + 1.645 + rng.normal(0, 0.1, (n, R))
        feats[f"{m}_frac_absz_gt2"] = np.clip(norm.cdf(-2 - mu) + norm.sf(2 - mu) + rng.normal(0, 0.01, (n, R)), 0, 1)
        feats[f"{m}_frac_z_lt_m2"] = np.clip(norm.cdf(-2 - mu) + rng.normal(0, 0.01, (n, R)), 0, 1)
        d = LESION_SIGN[m] * mu  # lesion direction positive
        # E[max(0, Z)] for Z ~ N(d, 1): the region mean of the clipped voxel map.
        anomaly_parts.append(d * norm.cdf(d) + norm.pdf(d))
    feats["pet_focal_z_mean"] = mean_z["pet"] - mean_z["pet"][:, cortical].mean(1, keepdims=True)
    return feats, anomaly_parts


def _present(rng: np.random.Generator, n: int, missing: dict[str, float] | None) -> dict[str, np.ndarray]:
    """Which patients have each modality."""
    present = {m: np.ones(n, bool) for m in MODALITIES}
    miss_frac = {"FLAIR": 0.1, "T1w": 0.05, "pet": 0.04} if missing is None else missing
    for m, frac in miss_frac.items():
        k = int(round(frac * n))  # noqa: RUF046 - numpy floats round to floats
        if k:
            present[m][rng.choice(n, size=k, replace=False)] = False
    return present


def _feature_array(rng: np.random.Generator, feats: dict[str, np.ndarray], anomaly_parts: list[np.ndarray],
                   present: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """(N, R, F) features with the anomaly summaries first; absent modalities NaN."""
    n, R = feats["pet_z_mean"].shape
    parts = np.stack(anomaly_parts)  # (M, N, R)
    pres = np.stack([present[m] for m in MODALITIES])[:, :, None]
    with np.errstate(invalid="ignore"):
        anomaly_mean = (parts * pres).sum(0) / pres.sum(0)
    names = ["anomaly_mean", "anomaly_p95"] + [k for k in feats]
    table = {"anomaly_mean": anomaly_mean, "anomaly_p95": anomaly_mean + 1.5 + rng.normal(0, 0.1, (n, R)), **feats}
    X = np.stack([table[k] for k in names], axis=-1).astype(np.float32)
    for j, name in enumerate(names):
        group = name.split("_", 1)[0]
        if group in present:
            X[~present[group], :, j] = np.nan
    return X, names


def simulate_region_bags(n_patients: int = 50, *, n_regions: int | None = None, seed: int = 0,
                         label_noise: tuple[float, float] = (1.0, 2.0),
                         missing: dict[str, float] | None = None) -> SyntheticCohort:
    """Simulate region tables of a coma cohort (see the module docstring for the model).

    Parameters
    ----------
    n_patients : int, default=50
    n_regions : int, optional
        Default: the 136 Neuromorphometrics regions.
    seed : int, default=0
    label_noise : (low, high), default=(1, 2)
        Per-patient label-noise SD drawn uniformly (mean 1.5).
    missing : dict, optional
        Fraction of patients missing each modality (default FLAIR 0.1, T1w 0.05, pet 0.04).
    """
    # The random draws follow one fixed order (damage, z maps, labels, features,
    # missing modalities): a seed always gives the same cohort.
    rng = np.random.default_rng(seed)
    region_index, region_names = _atlas_regions(n_regions)
    causal, cortical = _region_kinds(region_names)
    n, R = n_patients, len(region_names)
    damage, distract = _damage(rng, n, causal)
    offset = rng.normal(0, 0.3, size=(n, 1))
    mean_z = {
        "T1w": -1.0 * damage - 2.0 * distract + rng.normal(0, 0.35, (n, R)),
        "FLAIR": 1.2 * damage + 2.5 * distract + rng.normal(0, 0.35, (n, R)),
        "pet": -3.0 * damage - 2.0 * distract + offset + rng.normal(0, 0.3, (n, R)),
    }
    c = mean_z["pet"][:, causal].mean(1)
    crs_true = CRS_MAX * expit(1.9 * (c + 1.4))
    crs_sd = rng.uniform(*label_noise, size=n)
    crs = np.clip(np.rint(crs_true + rng.normal(0, crs_sd)), 0, CRS_MAX)
    feats, anomaly_parts = _modality_features(rng, mean_z, cortical)
    present = _present(rng, n, missing)
    X, names = _feature_array(rng, feats, anomaly_parts, present)
    g = (100.0 * (1.0 + 0.12 * mean_z["pet"][:, cortical].mean(1)))[:, None]
    g[~present["pet"]] = np.nan
    bags = RegionBags(
        participant_ids=[f"sub-p{i + 1:03d}" for i in range(n)], features=X, missing=~np.isfinite(X),
        region_index=region_index, region_names=region_names, feature_names=names,
        global_features=g.astype(np.float32), global_feature_names=["global_cortical_pet_percent"],
        atlas="neuromorphometrics",
    )
    return SyntheticCohort(bags=bags, crs=crs, crs_true=crs_true, crs_sd=crs_sd, causal=causal)


def write_scores_dir(cohort: SyntheticCohort, out_dir: str | os.PathLike) -> Path:
    """Write the cohort as an `anomaly score` folder (region tables + scores.json) and a
    participants.tsv next to it; returns the scores folder."""
    out = Path(out_dir)
    bags = cohort.bags
    for i, pid in enumerate(bags.participant_ids):
        sub = out / pid
        sub.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame({"index": bags.region_index, "name": bags.region_names, "n_voxels": 100})
        for j, name in enumerate(bags.feature_names):
            df[name] = bags.features[i, :, j]
        df.to_csv(sub / f"{pid}_{SPACE}_atlas-{bags.atlas}_regions.tsv", sep="\t", index=False, na_rep="n/a",
                  float_format="%.5g")
        glob = {}
        if bags.global_features is not None:
            glob = {k: float(v) for k, v in zip(bags.global_feature_names, bags.global_features[i]) if np.isfinite(v)}
        (sub / f"{pid}_scores.json").write_text(json.dumps({**glob, "pet_reference": "cerebellum"}))
    (out / "dataset_description.json").write_text(json.dumps({"Name": "synthetic", "DatasetType": "derivative"}))
    return out
