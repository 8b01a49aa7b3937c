"""Region tables -> bags of region instances for the CRS-R regressor.

`anomaly score` writes one table per subject and atlas
(``sub-<l>/sub-<l>_space-..._atlas-<name>_regions.tsv``); each row is one atlas region,
each numeric column one summary statistic. A subject becomes a *bag*, each region an
*instance*: ``features[n, r, f]`` is statistic ``f`` of region ``r`` for subject ``n``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly.constants import lesion_sign
from anomaly.io import AnomalyInputError, read_table

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_GLOBAL_FEATURES",
    "RegionBags",
    "bags_from_tables",
    "damage_sign",
    "default_features",
    "feature_group",
    "find_region_tables",
    "load_region_bags",
    "select_features",
]

#: Region-table columns the CRS-R regressor uses by default (regular expressions): the
#: focal PET deviation (log ratio to the subject's own cortex, against the controls)
#: and each modality's mean z, whose missing values say which modality a subject
#: lacks. ``anomaly_mean`` (the combined map) changes meaning when a modality is
#: missing; on the realistic pipeline cohort (README, "CRS-R") these columns gave the
#: lower error, and a patient without PET kept a sensible estimate. Tables without
#: them fall back to ``anomaly_mean``; ``features="all"`` gives every column.
DEFAULT_FEATURES = (r"pet_focal_logratio_z", r"[A-Za-z0-9]+_z_mean")
#: Used when no column matches :data:`DEFAULT_FEATURES` (tables of older versions).
FALLBACK_FEATURES = ("anomaly_mean",)
#: Subject-level values used by default: the global cortical metabolism level (% of
#: normal), the best-established PET marker of consciousness recovery.
DEFAULT_GLOBAL_FEATURES = ("global_cortical_pet_percent",)

# Columns of a region table that describe the region rather than the subject.
_ID_COLUMNS = ("index", "name", "n_voxels")
_ATLAS_RE = re.compile(r"_atlas-([A-Za-z0-9]+)(?:_[^/]*)?_regions\.tsv$")


def feature_group(name: str) -> str:
    """Return the feature group of a region-table column (its modality, or "anomaly").

    Modality names are BIDS suffixes without underscores, so the first token is the
    group: ``"pet_z_mean"`` and ``"pet_focal_z_mean"`` -> ``"pet"``;
    ``"anomaly_p95"`` -> ``"anomaly"``. Missingness is shared within a group.
    """
    return name.split("_", 1)[0]


def damage_sign(name: str) -> float:
    """Direction in which a feature grows with damage: +1, -1, or 0 (either way).

    * the combined anomaly (``anomaly_*``) and fractions of abnormal voxels
      (``*_frac_*``): +1;
    * a level in percent of normal (``*percent*``, e.g. the global cortical PET
      level): -1;
    * a modality's z or focal deviation (``pet_z_mean``, ``pet_focal_logratio_z``,
      ``FLAIR_z_p95``...): the direction its lesions push it
      (:func:`anomaly.constants.lesion_sign`: -1 for PET and T1w, +1 for FLAIR...),
      0 (two-sided) for a modality without a known direction;
    * anything else: 0.

    The signed regressor (:mod:`anomaly.crs.signed`) constrains more damage never to
    raise the predicted CRS-R along these directions.
    """
    group = feature_group(name)
    if group == "anomaly" or "_frac_" in name:
        return 1.0
    if "percent" in name:
        return -1.0
    if "_z" in name or "focal" in name:
        return float(lesion_sign(group))
    return 0.0


@dataclass
class RegionBags:
    """Per-subject region features (one bag per subject, one instance per region).

    Attributes
    ----------
    participant_ids : list of str
        ``"sub-<label>"`` for each bag.
    features : ndarray of float32, shape (N, R, F)
        Region statistics; NaN where missing.
    missing : ndarray of bool, shape (N, R, F)
        True where the value is missing (a modality the subject lacks, a region with
        no voxels...).
    region_index : ndarray of int, shape (R,)
        Atlas label of each region.
    region_names : list of str
        Atlas region names.
    feature_names : list of str
        Region-table columns used as features.
    global_features : ndarray of float32, shape (N, G), optional
        Subject-level numeric values from ``sub-<l>_scores.json`` (NaN if missing).
    global_feature_names : list of str
        Names of the global features.
    atlas : str, optional
        Atlas name taken from the table file names.
    """

    participant_ids: list[str]
    features: np.ndarray
    missing: np.ndarray
    region_index: np.ndarray
    region_names: list[str]
    feature_names: list[str]
    global_features: np.ndarray | None = None
    global_feature_names: list[str] = field(default_factory=list)
    atlas: str | None = None

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32)
        if self.features.ndim != 3:
            raise ValueError(f"features must have shape (N, R, F), got {self.features.shape}")
        n, r, f = self.features.shape
        if self.missing is None:
            self.missing = ~np.isfinite(self.features)
        self.missing = np.asarray(self.missing, dtype=bool) | ~np.isfinite(self.features)
        # Missing values are NaN everywhere so that no code can mistake them for data.
        self.features = np.where(self.missing, np.float32(np.nan), self.features)
        self.participant_ids = [str(p) for p in self.participant_ids]
        self.region_index = np.asarray(self.region_index, dtype=np.int64)
        self.region_names = [str(x) for x in self.region_names]
        self.feature_names = [str(x) for x in self.feature_names]
        if len(self.participant_ids) != n or self.region_index.shape != (r,) or len(self.region_names) != r or len(self.feature_names) != f:
            raise ValueError("participant_ids, region_index, region_names and feature_names must match features' shape")
        if self.global_features is not None:
            self.global_features = np.asarray(self.global_features, dtype=np.float32).reshape(n, -1)
            if self.global_features.shape[1] == 0:
                self.global_features = None
            elif len(self.global_feature_names) != self.global_features.shape[1]:
                raise ValueError("global_feature_names must match global_features' shape")
        if self.global_features is None:
            self.global_feature_names = []

    # ------------------------------------------------------------------ helpers
    @classmethod
    def from_array(cls, features: np.ndarray, *, participant_ids: Sequence[str] | None = None,
                   feature_names: Sequence[str] | None = None, region_index: Sequence[int] | None = None,
                   region_names: Sequence[str] | None = None, global_features: np.ndarray | None = None) -> RegionBags:
        """Wrap a plain ``(N, R, F)`` array (NaN = missing) with generic names."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 3:
            raise ValueError(f"features must have shape (N, R, F), got {features.shape}")
        n, r, f = features.shape
        g = None if global_features is None else np.asarray(global_features, dtype=np.float32).reshape(n, -1)
        return cls(
            participant_ids=list(participant_ids) if participant_ids is not None else [f"sub-{i:03d}" for i in range(n)],
            features=features,
            missing=~np.isfinite(features),
            region_index=np.asarray(region_index if region_index is not None else np.arange(1, r + 1)),
            region_names=list(region_names) if region_names is not None else [f"region{i + 1}" for i in range(r)],
            feature_names=list(feature_names) if feature_names is not None else [f"f{i}" for i in range(f)],
            global_features=g,
            global_feature_names=[] if g is None else [f"g{i}" for i in range(g.shape[1])],
        )

    def __len__(self) -> int:
        return len(self.participant_ids)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(N, R, F)``."""
        return tuple(self.features.shape)  # type: ignore[return-value]

    def subset(self, idx: Sequence[int] | np.ndarray) -> RegionBags:
        """Bags ``idx`` (integer positions or a boolean mask)."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return RegionBags(
            participant_ids=[self.participant_ids[i] for i in idx],
            features=self.features[idx],
            missing=self.missing[idx],
            region_index=self.region_index,
            region_names=self.region_names,
            feature_names=self.feature_names,
            global_features=None if self.global_features is None else self.global_features[idx],
            global_feature_names=list(self.global_feature_names),
            atlas=self.atlas,
        )

    def align(self, *, region_index: Sequence[int], feature_names: Sequence[str],
              global_feature_names: Sequence[str] = ()) -> RegionBags:
        """Reorder regions and features to a model's layout.

        Regions must be the same set (a model is tied to its atlas). Features or global
        values the bags lack become missing (e.g. a modality absent from the whole
        scoring run); extra ones are dropped.
        """
        region_index = np.asarray(region_index, dtype=np.int64)
        pos = {int(k): i for i, k in enumerate(self.region_index)}
        if set(pos) != {int(k) for k in region_index}:
            raise AnomalyInputError(
                f"region tables have {len(pos)} regions that differ from the model's {len(region_index)} atlas regions"
            )
        r_idx = np.array([pos[int(k)] for k in region_index])
        n, r = len(self), len(region_index)
        feats = np.full((n, r, len(feature_names)), np.nan, dtype=np.float32)
        fpos = {name: i for i, name in enumerate(self.feature_names)}
        for j, name in enumerate(feature_names):
            if name in fpos:
                feats[:, :, j] = self.features[:, r_idx, fpos[name]]
        glob = None
        if len(global_feature_names):
            glob = np.full((n, len(global_feature_names)), np.nan, dtype=np.float32)
            gpos = {name: i for i, name in enumerate(self.global_feature_names)}
            for j, name in enumerate(global_feature_names):
                if name in gpos and self.global_features is not None:
                    glob[:, j] = self.global_features[:, gpos[name]]
        return RegionBags(
            participant_ids=list(self.participant_ids),
            features=feats,
            missing=~np.isfinite(feats),
            region_index=region_index,
            region_names=[self.region_names[i] for i in r_idx],
            feature_names=list(feature_names),
            global_features=glob,
            global_feature_names=list(global_feature_names),
            atlas=self.atlas,
        )

    def select(self, features: Sequence[str] | None = None,
               global_features: Sequence[str] | None = None) -> RegionBags:
        """Keep some region features and subject-level values, in the order given.

        Parameters
        ----------
        features : sequence of str, optional
            Region-table columns to keep (default: all).
        global_features : sequence of str, optional
            Subject-level values to keep (default: all; ``()`` keeps none).

        Raises
        ------
        KeyError
            A name the bags do not have.
        """
        fnames = list(self.feature_names) if features is None else [str(f) for f in features]
        gnames = list(self.global_feature_names) if global_features is None else [str(g) for g in global_features]
        for wanted, have, kind in ((fnames, self.feature_names, "feature"),
                                   (gnames, self.global_feature_names, "subject-level value")):
            unknown = [n for n in wanted if n not in have]
            if unknown:
                raise KeyError(f"no {kind} {unknown[0]!r}; available: {', '.join(have) or 'none'}")
        if not fnames:
            raise KeyError("at least one region feature is needed")
        f_idx = [self.feature_names.index(n) for n in fnames]
        g_idx = [self.global_feature_names.index(n) for n in gnames]
        return RegionBags(
            participant_ids=list(self.participant_ids),
            features=self.features[:, :, f_idx],
            missing=self.missing[:, :, f_idx],
            region_index=self.region_index,
            region_names=list(self.region_names),
            feature_names=fnames,
            global_features=None if not g_idx or self.global_features is None else self.global_features[:, g_idx],
            global_feature_names=gnames if g_idx else [],
            atlas=self.atlas,
        )

    def feature(self, name: str) -> np.ndarray:
        """The ``(N, R)`` matrix of one feature (NaN where missing)."""
        try:
            j = self.feature_names.index(name)
        except ValueError:
            raise KeyError(f"no feature {name!r}; available: {', '.join(self.feature_names)}") from None
        return self.features[:, :, j]


def as_region_bags(X: RegionBags | np.ndarray) -> RegionBags:
    """Accept RegionBags or a plain ``(N, R, F)`` array."""
    if isinstance(X, RegionBags):
        return X
    return RegionBags.from_array(np.asarray(X, dtype=np.float32))


# --------------------------------------------------------------------------- reading
def find_region_tables(scores_dir: str | os.PathLike, *, atlas: str | None = None) -> tuple[str, dict[str, Path]]:
    """Locate the region tables of a scores folder.

    Parameters
    ----------
    scores_dir : path
        Output folder of ``anomaly score`` (``sub-<l>/`` subfolders).
    atlas : str, optional
        Atlas name (the ``atlas-<name>`` entity). Chosen automatically when the folder
        holds tables of a single atlas.

    Returns
    -------
    atlas : str
        The atlas name.
    tables : dict
        ``participant_id -> path``, sorted by participant id.
    """
    scores_dir = Path(scores_dir)
    if not scores_dir.is_dir():
        raise AnomalyInputError(f"{scores_dir}: scores folder not found")
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(scores_dir.glob("sub-*/sub-*_regions.tsv")):
        m = _ATLAS_RE.search(path.name)
        subject = path.parent.name
        if m is None or not path.name.startswith(subject + "_"):
            continue
        found.setdefault(m.group(1), {}).setdefault(subject, path)
    if not found:
        raise AnomalyInputError(f"{scores_dir}: no sub-*/sub-*_atlas-*_regions.tsv region tables (run `anomaly score` first)")
    if atlas is None:
        if len(found) > 1:
            raise AnomalyInputError(f"{scores_dir}: region tables for several atlases ({', '.join(sorted(found))}); choose one with atlas=")
        atlas = next(iter(found))
    else:
        # A path to a user atlas was probably given to `anomaly score`: match its stem.
        name = str(atlas)
        if name not in found:
            stem = Path(name).name.split(".")[0]
            stem = re.sub(r"^atlas-", "", stem).split("_")[0]
            if stem in found:
                name = stem
            else:
                raise AnomalyInputError(f"{scores_dir}: no region tables for atlas {atlas!r} (found: {', '.join(sorted(found))})")
        atlas = name
    return atlas, dict(sorted(found[atlas].items()))


def _read_table(path: Path) -> pd.DataFrame:
    return read_table(path, "region table", required=("index", "name"), sep="\t", na_values=["n/a"],
                      keep_default_na=False)


def _read_globals(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise AnomalyInputError(f"{path}: cannot parse scores JSON") from None
    if not isinstance(obj, dict):
        return {}
    # Top-level numbers only: booleans, strings and nested QC records are not features.
    return {
        str(k): float(v)
        for k, v in obj.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
    }


def load_region_bags(
    scores_dir: str | os.PathLike,
    *,
    atlas: str | None = None,
    participant_ids: Sequence[str] | None = None,
    use_globals: bool = True,
) -> RegionBags:
    """Read every subject's region table of one atlas into :class:`RegionBags`.

    Parameters
    ----------
    scores_dir : path
        Output folder of ``anomaly score``.
    atlas : str, optional
        Atlas name; chosen automatically when only one kind of region table exists.
    participant_ids : sequence of str, optional
        Subjects to load, in this order (``"sub-01"`` or ``"01"``). Every one must have
        a table. Default: all subjects with a table, sorted.
    use_globals : bool, default=True
        Read the numeric top-level values of ``sub-<l>_scores.json`` (e.g.
        ``global_cortical_pet_percent``) as subject-level features.

    Returns
    -------
    RegionBags

    Raises
    ------
    anomaly.io.AnomalyInputError
        No tables, an unknown atlas, a requested subject without a table, or subjects
        whose tables list different regions.
    """
    scores_dir = Path(scores_dir)
    atlas, tables = find_region_tables(scores_dir, atlas=atlas)
    if participant_ids is None:
        pids = list(tables)
    else:
        pids = [p if str(p).startswith("sub-") else f"sub-{p}" for p in map(str, participant_ids)]
        lacking = [p for p in pids if p not in tables]
        if lacking:
            raise AnomalyInputError(
                f"{scores_dir}: no atlas-{atlas} region table for {', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}"
            )
    if not pids:
        raise AnomalyInputError(f"{scores_dir}: no subjects to load")

    frames = [_read_table(tables[p]) for p in pids]
    records = [_read_globals(tables[p].parent / f"{p}_scores.json") for p in pids] if use_globals else None
    return bags_from_tables(frames, participant_ids=pids, global_values=records, atlas=atlas, where=str(scores_dir))


def _check_tables(frames: list[pd.DataFrame], pids: list[str], atlas: str | None, where: str) -> np.ndarray:
    """Every table has index and name columns and the regions of the first; its region index."""
    if not frames or len(frames) != len(pids):
        raise AnomalyInputError(f"{where}: expected one region table per participant")
    for pid, df in zip(pids, frames):
        for col in ("index", "name"):
            if col not in df.columns:
                raise AnomalyInputError(f"{where}: the region table of {pid} has no {col!r} column")
    ref_index = pd.to_numeric(frames[0]["index"]).to_numpy(dtype=np.int64)
    for pid, df in zip(pids, frames):
        if len(df) != len(frames[0]) or not np.array_equal(pd.to_numeric(df["index"]).to_numpy(dtype=np.int64), ref_index):
            raise AnomalyInputError(
                f"{where}: {pid} has different atlas{'-' + atlas if atlas else ''} regions than {pids[0]} "
                "(rescore with one atlas)"
            )
    return ref_index


def _feature_stack(frames: list[pd.DataFrame]) -> tuple[np.ndarray, list[str]]:
    """(N, R, F) float32 features over the union of the tables' feature columns."""
    # Union of feature columns in order of first appearance: a subject scored by a
    # model with fewer modalities simply has those features missing.
    feature_names: list[str] = []
    for df in frames:
        for col in df.columns:
            if col not in _ID_COLUMNS and col not in feature_names:
                feature_names.append(col)
    feats = np.full((len(frames), len(frames[0]), len(feature_names)), np.nan, dtype=np.float32)
    for i, df in enumerate(frames):
        for j, col in enumerate(feature_names):
            if col in df.columns:
                feats[i, :, j] = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float32)
    return feats, feature_names


def _global_stack(global_values: Sequence[Mapping[str, float]] | None) -> tuple[np.ndarray | None, list[str]]:
    """(N, G) float32 subject-level values over the union of their numeric names."""
    glob = None
    glob_names: list[str] = []
    if global_values is not None:
        for rec in global_values:
            for k, v in rec.items():
                if k not in glob_names and isinstance(v, (int, float)) and not isinstance(v, bool):
                    glob_names.append(k)
        if glob_names:
            glob = np.array([[float(rec.get(k, np.nan)) for k in glob_names] for rec in global_values], dtype=np.float32)
    return glob, glob_names


def bags_from_tables(tables: Sequence[pd.DataFrame], *, participant_ids: Sequence[str],
                     global_values: Sequence[Mapping[str, float]] | None = None, atlas: str | None = None,
                     where: str = "region tables") -> RegionBags:
    """Build :class:`RegionBags` from region tables already in memory.

    Parameters
    ----------
    tables : sequence of DataFrame
        One region table per subject (columns index, name, [n_voxels], features...).
    participant_ids : sequence of str
    global_values : sequence of mapping, optional
        Subject-level numeric values (e.g. ``{"global_cortical_pet_percent": 52.0}``).
    atlas : str, optional
    where : str
        Named in error messages (the folder the tables come from).
    """
    pids = [str(p) for p in participant_ids]
    frames = list(tables)
    ref_index = _check_tables(frames, pids, atlas, where)
    feats, feature_names = _feature_stack(frames)
    glob, glob_names = _global_stack(global_values)
    return RegionBags(
        participant_ids=pids,
        features=feats,
        missing=~np.isfinite(feats),
        region_index=ref_index,
        region_names=frames[0]["name"].astype(str).tolist(),
        feature_names=feature_names,
        global_features=glob,
        global_feature_names=glob_names,
        atlas=atlas,
    )


def _names(value: str | Sequence[str] | None) -> str | list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` -> list; ``"all"`` / ``"none"`` / None unchanged."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("all", "none"):
            return value.strip().lower()
        value = value.split(",")
    return [str(v).strip() for v in value if str(v).strip()]


def default_features(names: Sequence[str]) -> list[str]:
    """The columns of ``names`` that :data:`DEFAULT_FEATURES` selects, in table order
    (:data:`FALLBACK_FEATURES` if none)."""
    chosen = [n for n in names if any(re.fullmatch(p, n) for p in DEFAULT_FEATURES)]
    return chosen or [f for f in FALLBACK_FEATURES if f in names]


def select_features(bags: RegionBags, features: str | Sequence[str] | None = None,
                    global_features: str | Sequence[str] | None = None, *, where: str = "region tables") -> RegionBags:
    """Keep the region features and subject-level values the regressor should see.

    Parameters
    ----------
    bags : RegionBags
    features : "all", list or comma-separated str, optional
        Region-table columns. Default: :data:`DEFAULT_FEATURES`.
    global_features : "all", "none", list or comma-separated str, optional
        Values of ``sub-<l>_scores.json``. Default: :data:`DEFAULT_GLOBAL_FEATURES`
        where present (a model without PET has no global cortical PET level).
    where : str
        Named in error messages.

    Raises
    ------
    anomaly.io.AnomalyInputError
        A requested name that no region table or scores file has.
    """
    features, global_features = _names(features), _names(global_features)
    if features is None:
        features = default_features(bags.feature_names) or "all"
    if global_features is None:
        global_features = [g for g in DEFAULT_GLOBAL_FEATURES if g in bags.global_feature_names]
    try:
        return bags.select(None if features == "all" else features,
                           None if global_features == "all" else [] if global_features == "none" else global_features)
    except KeyError as exc:
        raise AnomalyInputError(f"{where}: {exc.args[0]}") from None
