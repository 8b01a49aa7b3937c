"""Self-check: how well a fitted normative model finds lesions on the user's own controls.

After fitting, up to four calibration controls each receive synthetic lesions in their
preprocessed images (model grid, MRI robust z units, PET SUVR). Two lesion types, meant
to look like what matters in disorders of consciousness rather than like any one
simulator (sizes and contrasts are drawn uniformly from broad ranges, not copied from
:mod:`anomaly.simulate`):

- ``hypometabolism`` (models with PET): a territory of touching regions of the default
  atlas (:data:`anomaly.atlas.DEFAULT_ATLAS`, resampled to the model grid; not
  ventricles, white matter or the PET reference regions), grown from a random region to
  5-80 ml (:data:`TERRITORY_ML`) and mirrored to the other hemisphere with probability
  1/2, loses 10-40 % of its uptake
  (:data:`REGION_DROP`); the edges fade with a Gaussian of sigma 3-8 mm
  (:data:`REGION_EDGE_SIGMA_MM`), scaled so that the region's median voxel gets the full
  drop. Lesion voxels: uptake lower by at least 10 % of the brain's median uptake
  (:data:`MIN_REGION_CHANGE`); voxels of a smaller drop (over 2 %) are left out of
  the scores.
- ``lesion``: a ball of radius 2.5-10 mm (:data:`BLOB_RADIUS_MM`; at least one voxel)
  with a sigmoid edge of 0.5-2 mm, anywhere in the brain at least one voxel from its
  edge, in every modality the model has: T1w (and ADC, two-sided or unknown MRI
  modalities) pulled towards the subject's own 2nd percentile and FLAIR/T2w towards its
  99.5th, each by its own fraction of 30-100 % (:data:`MRI_PULL`), PET lowered by
  20-70 % (:data:`BLOB_PET_DROP`). Lesion voxels: weight > 0.5 (0.02-0.5: left out).

Two regions (with PET) and three balls per control, from the model's seed. Each
control is then scored out of sample: its own contribution is removed from the
calibration sums (exact leave-one-out,
:meth:`~anomaly.normative.calibration.VoxelwiseLinearModel.without`), and every method
the model can give (``ae``, ``zscore``, ``hybrid``, or ``zscore`` alone) is scored by
the voxel AUROC and AUPRC of its combined anomaly map (post-processed as the model's
``median_filter``, ``map_smoothing``, ``erode_mask`` and ``map_rim`` say) against the
lesion voxels over the brain mask (the rim outside it does not count), pooled over the
controls and lesion types (``methods``) and per type (``by_type``: the other type's
voxels left out).

The table goes to ``metadata.json`` (``self_check``) and the model card; ``fit-normative
--method auto`` keeps hybrid unless another method has the higher AUPRC in every
held-out control (:func:`best_method`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from anomaly.constants import PET, lesion_sign
from anomaly.normative.calibration import standardise
from anomaly.normative.maps import combine_anomaly

if TYPE_CHECKING:
    from anomaly.atlas import Atlas
    from anomaly.normative.calibration import VoxelwiseLinearModel
    from anomaly.normative.data import CachedSubject

__all__ = ["LESION_TYPES", "best_method", "inject_lesions", "self_check", "self_check_text"]

#: Lesion types; ``inject_lesions`` codes voxels of type ``LESION_TYPES[i]`` as ``i + 1``.
LESION_TYPES = ("hypometabolism", "lesion")
#: Uniform ranges of the regional hypometabolism: uptake drop and edge sigma (mm).
REGION_DROP = (0.10, 0.40)
REGION_EDGE_SIGMA_MM = (3.0, 8.0)
#: Regions never chosen: no grey matter, or a PET reference region (uptake is relative to it).
EXCLUDED_REGIONS = re.compile(r"ventric|vent$|csf|white|vessel|chiasm|cerebel|brain.?stem|vermis|pons",
                              re.IGNORECASE)
MIN_REGION_ML = 1.0
#: Volume (ml, drawn log-uniformly) of touching regions that a hypometabolic territory grows to.
TERRITORY_ML = (5.0, 80.0)
MAX_TERRITORY_REGIONS = 8
#: Hypometabolism voxels count as lesion where uptake falls by this fraction of the brain's
#: median uptake (so not in low-uptake voxels, where the same relative drop is a small
#: change); smaller changes above FRINGE, and the balls' edges of weight FRINGE..0.5, are
#: left out of the scores.
MIN_REGION_CHANGE = 0.10
FRINGE = 0.02
#: Uniform ranges of the balls: radius and sigmoid edge (mm), MRI pull, PET drop.
BLOB_RADIUS_MM = (2.5, 10.0)
BLOB_EDGE_MM = (0.5, 2.0)
MRI_PULL = (0.3, 1.0)
BLOB_PET_DROP = (0.2, 0.7)
#: Percentiles of the subject's brain intensities that MRI lesions are pulled towards.
LOW_PERCENTILE, HIGH_PERCENTILE = 2.0, 99.5
MAX_SUBJECTS = 4
REGIONS_PER_SUBJECT = 2
BLOBS_PER_SUBJECT = 3


def _homologue(name: str, by_name: Mapping[str, int]) -> int | None:
    """Index of the other hemisphere's region (``Left_X`` / ``Right_X``, ``X_L`` / ``X_R``)."""
    for a, b in (("Left", "Right"), ("Right", "Left"), ("_L", "_R"), ("_R", "_L")):
        other = re.sub(rf"^{a}|{a}$", b, name, count=1)
        if other != name and other in by_name:
            return by_name[other]
    return None


def _region_group(labels: np.ndarray, candidates: Mapping[int, str], rng: np.random.Generator,
                  voxel_ml: float) -> list[int]:
    """A territory of touching candidate regions, mirrored to the other hemisphere with p = 1/2.

    It grows from a random region by random touching regions until it holds a volume
    drawn log-uniformly from :data:`TERRITORY_ML` (network-wide hypometabolism, not a
    single gyrus).

    Parameters
    ----------
    labels : ndarray of int, shape (X, Y, Z)
        Atlas labels on the model grid.
    candidates : mapping of int to str
        Regions that may be chosen (:func:`region_candidates`).
    rng : numpy.random.Generator
    voxel_ml : float
        Volume of one voxel in ml.
    """
    keys = sorted(candidates)
    target_ml = float(np.exp(rng.uniform(*np.log(TERRITORY_ML))))
    group = [keys[rng.integers(len(keys))]]
    inside = labels == group[0]
    while inside.sum() * voxel_ml < target_ml and len(group) < MAX_TERRITORY_REGIONS:
        shell = ndimage.binary_dilation(inside) & ~inside
        touching = sorted(set(np.unique(labels[shell]).tolist()) & set(keys))
        if not touching:
            break
        group.append(touching[rng.integers(len(touching))])
        inside |= labels == group[-1]
    if rng.random() < 0.5:
        by_name = {n: i for i, n in candidates.items()}
        group += [o for o in (_homologue(candidates[i], by_name) for i in group) if o is not None and o not in group]
    return group


def region_candidates(atlas: Atlas, mask: np.ndarray, resolution: float) -> dict[int, str]:
    """Atlas regions (on the model grid) that may receive hypometabolism: grey matter, >= 1 ml.

    Parameters
    ----------
    atlas : Atlas
        Resampled to the model grid.
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask of the model.
    resolution : float
        Voxel size in mm.

    Returns
    -------
    dict
        Region index -> name.
    """
    labels = atlas.label_array()
    counts = np.bincount(labels[mask].ravel(), minlength=int(labels.max()) + 1)
    min_voxels = max(MIN_REGION_ML * 1000.0 / resolution ** 3, 8)
    return {int(i): str(n) for i, n in zip(atlas.labels["index"], atlas.labels["name"])
            if not EXCLUDED_REGIONS.search(str(n)) and counts[int(i)] >= min_voxels}


def _regional_weight(labels: np.ndarray, group: Sequence[int], mask: np.ndarray, sigma_mm: float,
                     resolution: float) -> np.ndarray:
    """Smoothed indicator of the regions, scaled so that their median voxel is 1, clipped to [0, 1]."""
    inside = np.isin(labels, group) & mask
    smooth = ndimage.gaussian_filter(inside.astype(np.float32), sigma_mm / resolution)
    level = float(np.median(smooth[inside])) if inside.any() else 1.0
    return np.clip(smooth / max(level, 1e-3), 0.0, 1.0) * mask


def _ball_weight(mask: np.ndarray, depth: np.ndarray, resolution: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, dict] | None:
    """A smooth-edged ball inside the brain, or None where the brain is too thin for it."""
    radius = max(float(rng.uniform(*BLOB_RADIUS_MM)), resolution)  # at least one voxel
    edge = float(rng.uniform(*BLOB_EDGE_MM))
    candidates = np.argwhere(depth >= radius + resolution)
    if candidates.size == 0:
        return None
    centre = candidates[rng.integers(len(candidates))]
    reach = int(np.ceil((radius + 4 * edge) / resolution)) + 1  # the sigmoid is < 0.02 beyond
    box = tuple(slice(max(int(c) - reach, 0), min(int(c) + reach + 1, n)) for c, n in zip(centre, mask.shape))
    grid = np.ogrid[box]
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre))) * resolution
    weight = np.zeros(mask.shape, np.float32)
    weight[box] = 1.0 / (1.0 + np.exp((dist - radius) / edge))
    return weight * mask, {"radius_mm": round(radius, 2), "edge_mm": round(edge, 2),
                           "centre_voxel": [int(v) for v in centre]}


def _apply_ball(out: np.ndarray, present: np.ndarray, modalities: Sequence[str], weight: np.ndarray,
                levels: Mapping[int, tuple[float, float]], rng: np.random.Generator,
                directions: Mapping[str, str] | None = None) -> dict:
    """Lesion contrast in every present modality (in place); returns the contrasts drawn.

    Parameters
    ----------
    out : ndarray, shape (C, X, Y, Z)
        Images to change in place.
    present : ndarray of bool, shape (C,)
    modalities : sequence of str
    weight : ndarray, shape (X, Y, Z)
        The ball, 0..1.
    levels : mapping of int to (float, float)
        Per MRI channel, the intensities that darker and brighter lesions approach.
    rng : numpy.random.Generator
    directions : mapping of str to str, optional
        Declared lesion directions (see :func:`inject_lesions`).
    """
    contrasts = {}
    for c, m in enumerate(modalities):
        if not present[c]:
            continue
        if m == PET:
            drop = float(rng.uniform(*BLOB_PET_DROP))
            out[c] *= 1.0 - drop * weight
            contrasts[m] = round(-drop, 3)
            continue
        pull = float(rng.uniform(*MRI_PULL))
        low, high = levels[c]
        brighter = lesion_sign(m, directions) > 0
        if brighter:  # FLAIR, T2w: brighter, towards the subject's brightest tissue
            out[c] += pull * weight * np.clip(high - out[c], 0.0, None)
        else:  # T1w darker; ADC and unknown MRI too (acute lesions are lower)
            out[c] -= pull * weight * np.clip(out[c] - low, 0.0, None)
        contrasts[m] = round(pull if brighter else -pull, 3)
    return contrasts


def _mark(truth: np.ndarray, code: int, core: np.ndarray, changed: np.ndarray) -> None:
    """Label ``core`` voxels ``code`` and the rest of ``changed`` -1 unless already a lesion (in place)."""
    truth[changed & (truth == 0)] = -1
    truth[core] = code


def inject_lesions(data: np.ndarray, present: np.ndarray, modalities: Sequence[str], mask: np.ndarray,
                   resolution: float, rng: np.random.Generator, *, atlas: Atlas | None = None,
                   n_regions: int = REGIONS_PER_SUBJECT,
                   n_blobs: int = BLOBS_PER_SUBJECT,
                   directions: Mapping[str, str] | None = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Add synthetic regional hypometabolism and lesions to one preprocessed subject.

    Parameters
    ----------
    data : ndarray, shape (C, X, Y, Z)
        Normalised images (not modified).
    present : ndarray of bool, shape (C,)
    modalities : sequence of str
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask of the model.
    resolution : float
        Voxel size in mm.
    rng : numpy.random.Generator
    atlas : Atlas, optional
        Regions on the model grid for the hypometabolism (none without it or without PET).
    n_regions, n_blobs : int
        Region groups with hypometabolism and balls to place.
    directions : mapping of str to str, optional
        Lesion direction per modality ("lower", "higher", "both"), as the model declares
        them (default: :data:`anomaly.constants.LESION_SIGN`); "both" is made lower.

    Returns
    -------
    tuple
        The lesioned images; the lesion voxels as int8, ``i + 1`` for
        ``LESION_TYPES[i]`` (a ball wins where both overlap), -1 for a changed voxel
        below the lesion threshold (left out of the scores), 0 for untouched; one record
        per lesion.
    """
    out = np.array(data, dtype=np.float32, copy=True)
    truth = np.zeros(mask.shape, np.int8)
    records: list[dict] = []
    pet = list(modalities).index(PET) if PET in modalities else None
    candidates = (region_candidates(atlas, mask, resolution)
                  if atlas is not None and pet is not None and present[pet] else {})
    typical = float(np.median(data[pet][mask])) if candidates else 0.0
    labels = atlas.label_array() if candidates else None
    for _ in range(n_regions if candidates else 0):
        group = _region_group(labels, candidates, rng, resolution ** 3 / 1000.0)
        drop, sigma = float(rng.uniform(*REGION_DROP)), float(rng.uniform(*REGION_EDGE_SIGMA_MM))
        weight = _regional_weight(labels, group, mask, sigma, resolution)
        out[pet] *= 1.0 - drop * weight
        change = drop * weight * data[pet] / max(typical, 1e-6)  # in units of the brain's median uptake
        _mark(truth, 1, change >= MIN_REGION_CHANGE, change >= FRINGE)
        records.append({"kind": "hypometabolism", "regions": [candidates[i] for i in group],
                        "drop": round(drop, 3), "edge_sigma_mm": round(sigma, 2)})
    levels = {c: tuple(np.percentile(data[c][mask], [LOW_PERCENTILE, HIGH_PERCENTILE]))
              for c, m in enumerate(modalities) if present[c] and m != PET}
    depth = ndimage.distance_transform_edt(mask) * resolution
    for _ in range(n_blobs if present.any() else 0):
        ball = _ball_weight(mask, depth, resolution, rng)
        if ball is None:
            break
        weight, record = ball
        record["contrast"] = _apply_ball(out, present, modalities, weight, levels, rng, directions)
        _mark(truth, 2, weight > 0.5, weight >= FRINGE)
        records.append({"kind": "lesion", **record})
    return out, truth, records


def self_check(model: Any, held_out: Sequence[CachedSubject], mean: np.ndarray, std: np.ndarray,
               sums: Mapping[str, VoxelwiseLinearModel], *, seed: int = 0) -> dict:
    """Detection of injected lesions by every method of a fitted model.

    Parameters
    ----------
    model : NormativeModel
        Fitted up to its calibration (network, ``calibration_``, ``mask_``, ``grid_``).
    held_out : sequence of CachedSubject
        Calibration controls (the first :data:`MAX_SUBJECTS` are used).
    mean, std : ndarray, shape (C,)
        Channel standardisation.
    sums : mapping of str to VoxelwiseLinearModel
        The calibration sums per component ("ae", "zscore"), for leave-one-out.
    seed : int
        Seed of the lesion placement.

    Returns
    -------
    dict
        ``n_subjects``, ``prevalence``, ``lesions`` (records), ``methods`` (method ->
        auroc, auprc over all lesion types), ``by_type`` (type -> method -> auroc,
        auprc) and ``prevalence_by_type``.
    """
    from anomaly.atlas import DEFAULT_ATLAS, Atlas

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5C,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small regions lost on a coarse grid are simply not drawn
        atlas = Atlas.load(DEFAULT_ATLAS).resample_to(model.grid_)
    directions = getattr(model, "lesion_directions", None)
    scores: dict[str, list[np.ndarray]] = {}
    labels, records = [], []
    for sub in list(held_out)[:MAX_SUBJECTS]:
        data = np.load(sub.path, mmap_mode="r").astype(np.float32)
        lesioned, truth, recs = inject_lesions(data, sub.present, model.modalities_, model.mask_,
                                               float(model.grid_.resolution), rng, atlas=atlas,
                                               directions=directions)
        if not (truth > 0).any():
            continue
        clean = standardise(data, sub.present, mean, std, model.mask_)
        try:
            loo = {k: vlm.without(model._residual(clean, sub.present, kind=k), sub.present, sub.age,
                                  sub.sex).finalise() for k, vlm in sums.items()}
        except ValueError:  # too few calibration controls to leave one out
            return {"n_subjects": 0, "lesions": [], "methods": {},
                    "skipped": "too few calibration controls to leave one out"}
        z = model.component_z(standardise(lesioned, sub.present, mean, std, model.mask_), sub.present,
                              sub.age, sub.sex, calibrations=loo)
        for method, zmap in z.items():
            anomaly = model.postprocess(  # the map as `score` gives it, post-processing included
                combine_anomaly(zmap, sub.present, model.modalities_, model.mask_, directions=directions,
                                rule=model.modality_rule))
            scores.setdefault(method, []).append(anomaly[model.mask_])
        labels.append(truth[model.mask_])
        records.append({"label": sub.label, "lesions": recs})
    if not labels:
        return {"n_subjects": 0, "lesions": [], "methods": {}}
    table = _detection_table(np.concatenate(labels), scores)
    table["per_subject_auprc"] = {m: [_auprc(y, sc) for y, sc in zip(labels, s)] for m, s in scores.items()}
    return {"n_subjects": len(labels), **table, "lesions": records}


def _auprc(kinds: np.ndarray, score: np.ndarray) -> float:
    """AUPRC of one subject's map against its lesion voxels (all types; changed fringe left out)."""
    from sklearn.metrics import average_precision_score

    known = kinds >= 0
    return round(float(average_precision_score(kinds[known] > 0, score[known])), 4)


def _detection_table(kinds: np.ndarray, scores: Mapping[str, Sequence[np.ndarray]]) -> dict:
    """AUROC and AUPRC per method, over all lesion voxels and per lesion type."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    def metrics(y: np.ndarray, s: np.ndarray) -> dict:
        return {"auroc": round(float(roc_auc_score(y, s)), 4),
                "auprc": round(float(average_precision_score(y, s)), 4)}

    known = kinds >= 0  # changed voxels below the lesion threshold are neither lesion nor healthy
    kinds = kinds[known]
    pooled = {m: np.concatenate(s)[known] for m, s in scores.items()}
    y = kinds > 0
    table = {"prevalence": round(float(y.mean()), 5), "methods": {m: metrics(y, s) for m, s in pooled.items()},
             "by_type": {}, "prevalence_by_type": {}}
    for code, kind in enumerate(LESION_TYPES, start=1):
        keep = (kinds == code) | ~y  # the other type's voxels are neither lesion nor background here
        yk = kinds[keep] == code
        if yk.any():
            table["by_type"][kind] = {m: metrics(yk, s[keep]) for m, s in pooled.items()}
            table["prevalence_by_type"][kind] = round(float(yk.mean()), 5)
    return table


def best_method(table: Mapping[str, Any]) -> str:
    """The method ``--method auto`` uses: hybrid unless the self-check clearly prefers another.

    Another method replaces hybrid only if its AUPRC beats hybrid's in every held-out
    control (with four controls, a one-sided sign test at p = 1/16) and its pooled AUPRC
    is the highest of those that do; the pooled differences between the methods are
    often smaller than the spread between seeds of the lesion placement. Without a
    hybrid or per-subject results (older tables): the highest pooled AUPRC. An empty
    table gives "hybrid".
    """
    methods = table.get("methods") or {}
    if not methods:
        return "hybrid"
    per_subject = table.get("per_subject_auprc") or {}
    if "hybrid" not in methods or "hybrid" not in per_subject:
        return max(methods, key=lambda m: (methods[m]["auprc"], m == "hybrid"))
    ref = per_subject["hybrid"]
    clear = [m for m in methods if m != "hybrid" and m in per_subject
             and all(a > b for a, b in zip(per_subject[m], ref))]
    return max(clear, key=lambda m: methods[m]["auprc"]) if clear else "hybrid"


def self_check_text(table: Mapping[str, Any]) -> str:
    """One line for the model card: AUPRC (AUROC) per method on the injected lesions, and per type."""
    methods = table.get("methods") or {}
    if not methods:
        return f"not run ({table.get('skipped', 'no held-out controls')})"
    parts = [f"{m} AUPRC {r['auprc']:.2f} (AUROC {r['auroc']:.2f})" for m, r in methods.items()]
    line = (f"{'; '.join(parts)}: lesions injected into {table['n_subjects']} held-out controls "
            f"(chance AUPRC {table.get('prevalence', float('nan')):.3f})")
    by_type = table.get("by_type") or {}
    if by_type:
        line += "; AUPRC by lesion type: " + "; ".join(
            f"{kind} " + ", ".join(f"{m} {r['auprc']:.2f}" for m, r in rows.items())
            for kind, rows in by_type.items())
    return line
