"""Brain atlases: shipped and user label images and their label tables.

An :class:`Atlas` is an integer label image in MNI space (0 = background) plus a
BIDS ``dseg.tsv``-style table (columns ``index`` and ``name``). The toolkit ships two
atlases (see ``atlases/README.md`` for their sources, citations and licences):

- ``"neuromorphometrics"`` (default): 136 regions at 1.5 mm, including the brainstem,
  both thalami and the cerebellum, which the coma hypotheses need;
- ``"aal"``: AAL2, 120 regions at 2 mm.

Any other atlas can be used by passing the path of its label NIfTI (and, optionally, of
its label table) to :meth:`Atlas.load`.

Invariant kept by every constructor and method: the label table lists exactly the
labels present in the image, sorted by index.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np
import pandas as pd

from anomaly.atlas.regions import RegionStats, paint_regions, percentile_name
from anomaly.io import AnomalyInputError, check_columns, load_image, read_map, read_table

from anomaly.preprocess import Grid, resample_image

__all__ = ["DEFAULT_ATLAS", "Atlas", "atlas_dir", "grid_coverage", "list_atlases"]

DEFAULT_ATLAS = "neuromorphometrics"

PathLike = Union[str, Path]
ImageLike = Union[PathLike, nib.spatialimages.SpatialImage]

# Shipped files are named like BIDS derivatives: atlas-<name>_dseg.nii.gz + .tsv.
_SHIPPED_PATTERN = "atlas-*_dseg.nii.gz"
# Tolerance for accepting float-stored labels as whole numbers (scl_slope rounding).
_INTEGER_ATOL = 1e-3


def atlas_dir() -> Path | None:
    """Return the folder holding the shipped atlases, or None if it is missing.

    Returns
    -------
    pathlib.Path or None
        ``anomaly/atlases`` inside an installed wheel (pyproject force-includes the
        repository's ``atlases/`` there), else ``atlases/`` at the repository root of
        an editable install.
    """
    package_dir = Path(__file__).resolve().parents[1]  # anomaly/, next to atlases/ when installed
    for candidate in (package_dir / "atlases", package_dir.parent / "atlases"):
        if candidate.is_dir() and any(candidate.glob(_SHIPPED_PATTERN)):
            return candidate
    return None


def list_atlases() -> list[str]:
    """Return the names of the shipped atlases, sorted.

    Returns
    -------
    list of str
        For example ``["aal", "neuromorphometrics"]``. Empty if the atlas folder is
        missing from the installation.
    """
    folder = atlas_dir()
    if folder is None:
        return []
    names = []
    for path in folder.glob(_SHIPPED_PATTERN):
        name = path.name[len("atlas-") : -len("_dseg.nii.gz")]
        if name:
            names.append(name)
    return sorted(names)


def _strip_nifti_suffix(path: Path) -> str:
    """File name without ``.nii`` or ``.nii.gz``."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _name_from_path(path: Path) -> str:
    """Atlas name for a user file: ``<name>`` of ``atlas-<name>_dseg``, else the stem.

    The name ends up in output file names as the BIDS entity ``atlas-<name>``, whose
    value must be alphanumeric, hence the clean-up.
    """
    stem = _strip_nifti_suffix(path)
    match = re.search(r"(?:^|_)atlas-([A-Za-z0-9]+)", stem)
    raw = match.group(1) if match else stem
    cleaned = re.sub(r"[^A-Za-z0-9]", "", raw)
    return cleaned or "custom"


def _auto_name(index: int) -> str:
    return f"region_{index}"


def _read_label_table(source: PathLike | pd.DataFrame | Mapping[int, str]) -> pd.DataFrame:
    """Read and validate a label table; return columns index (int64), name (str).

    Raises
    ------
    AnomalyInputError
        Unreadable file, missing ``index``/``name`` columns, non-integer or duplicate
        indices.
    """
    if isinstance(source, Mapping):
        table = pd.DataFrame({"index": list(source.keys()), "name": list(source.values())})
        where = "labels"
    elif isinstance(source, pd.DataFrame):
        table = source.copy()
        where = "labels"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise AnomalyInputError(f"{path}: atlas label table not found")
        # keep_default_na=False: a region may legitimately be called "NA".
        table = read_table(path, "atlas label table", sep="\t", dtype=str, keep_default_na=False)
    check_columns(table, ("index", "name"), where, "atlas label table",
                  hint="expected tab-separated columns index, name")
    index = pd.to_numeric(table["index"], errors="coerce")
    bad = table["index"][index.isna() | (index != np.round(index))]
    if len(bad):
        raise AnomalyInputError(
            f"{where}: atlas label table has non-integer index value(s): "
            f"{', '.join(map(str, bad.iloc[:5]))}"
        )
    index = index.astype(np.int64)
    duplicated = sorted(set(index[index.duplicated()]))
    if duplicated:
        raise AnomalyInputError(
            f"{where}: atlas label table has duplicate index value(s): "
            f"{', '.join(map(str, duplicated[:10]))}"
        )
    names = table["name"].astype(object).where(table["name"].notna(), "")
    names = names.map(lambda value: str(value).strip())
    names = [name or _auto_name(i) for i, name in zip(index, names)]
    out = pd.DataFrame({"index": index.to_numpy(), "name": names})
    # 0 is the background by definition; some dseg.tsv files list it anyway.
    out = out[out["index"] != 0]
    return out.sort_values("index").reset_index(drop=True)


def _integer_labels(img: nib.spatialimages.SpatialImage, where: str) -> np.ndarray:
    """Return the label array as int32, refusing non-whole, negative or 4D data."""
    if len(img.shape) != 3:
        raise AnomalyInputError(
            f"{where}: an atlas must be a 3D label image, got shape {tuple(img.shape)}"
        )
    data = np.asarray(img.dataobj)
    if not np.issubdtype(data.dtype, np.integer):
        data = np.asarray(data, dtype=np.float64)
        if not np.all(np.isfinite(data)):
            raise AnomalyInputError(f"{where}: atlas labels contain NaN or infinite values")
        rounded = np.rint(data)
        if not np.allclose(data, rounded, rtol=0.0, atol=_INTEGER_ATOL):
            example = data[np.abs(data - rounded) > _INTEGER_ATOL].flat[0]
            raise AnomalyInputError(
                f"{where}: atlas labels must be whole numbers, found e.g. {example:g} "
                "(a probabilistic or resampled-with-interpolation map is not a label image)"
            )
        data = rounded
    if data.size and data.min() < 0:
        raise AnomalyInputError(f"{where}: atlas labels must be >= 0, found {data.min()}")
    if data.size and data.max() > np.iinfo(np.int32).max:
        raise AnomalyInputError(f"{where}: atlas label values exceed the int32 range")
    return np.asarray(data, dtype=np.int32)


def _label_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(data, dtype=np.int32), np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(np.int32)
    img.header.set_xyzt_units("mm")
    return img


def _same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(
        affine_a, affine_b, atol=1e-4
    )


class Atlas:
    """An integer label image in MNI space and its table of region names.

    Parameters
    ----------
    image : nibabel.Nifti1Image
        3D integer label image; 0 is the background.
    labels : pandas.DataFrame
        Columns ``index`` (int) and ``name`` (str). Entries whose index is absent from
        the image are dropped; labels present in the image but absent from the table
        get the name ``region_<index>`` and a warning.
    name : str
        Short name, used in output file names as ``atlas-<name>``.

    Attributes
    ----------
    name : str
    image : nibabel.Nifti1Image
        int32 label image.
    labels : pandas.DataFrame
        Exactly the labels present in ``image``, sorted by index.

    Notes
    -----
    Use :meth:`Atlas.load` to read a shipped atlas or files; the constructor is for
    arrays already in memory.
    """

    def __init__(
        self,
        image: nib.spatialimages.SpatialImage,
        labels: pd.DataFrame | Mapping[int, str] | None = None,
        name: str = "custom",
    ) -> None:
        table = _read_label_table(labels) if labels is not None else None
        self._setup(image, table, str(name), where=f"atlas '{name}'")

    def _setup(
        self,
        image: nib.spatialimages.SpatialImage,
        table: pd.DataFrame | None,
        name: str,
        where: str,
    ) -> None:
        """Validate the labels and fill the attributes; ``where`` names the source."""
        self.name = name
        self.image = _label_image(_integer_labels(image, where), image.affine)
        self._data = np.asarray(self.image.dataobj)
        self.labels = self._reconcile(table, where)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        name_or_path: str | Path | nib.spatialimages.SpatialImage = DEFAULT_ATLAS,
        labels: PathLike | pd.DataFrame | Mapping[int, str] | None = None,
    ) -> Atlas:
        """Load a shipped atlas by name or a user atlas from files.

        Parameters
        ----------
        name_or_path : str, pathlib.Path or nibabel image, default "neuromorphometrics"
            A shipped atlas name (see :func:`list_atlases`; case-insensitive), or the
            path of a 3D integer label NIfTI in MNI space, or such an image.
        labels : path, DataFrame or mapping, optional
            Label table with columns ``index`` and ``name`` (a BIDS ``dseg.tsv``). By
            default, the file next to the image with ``.tsv`` instead of
            ``.nii[.gz]``; if there is none, regions are named ``region_<index>``.

        Returns
        -------
        Atlas

        Raises
        ------
        AnomalyInputError
            Unknown atlas name, unreadable or 4D image, non-integer labels, or a label
            table without ``index``/``name`` columns or with duplicate indices.
        """
        if isinstance(name_or_path, nib.spatialimages.SpatialImage):
            img = load_image(name_or_path, name="atlas")
            return cls(img, labels, name="custom")

        known = list_atlases()
        text = str(name_or_path)
        if isinstance(name_or_path, str) and text.lower() in known:
            folder = atlas_dir()
            assert folder is not None  # list_atlases() found it
            path = folder / f"atlas-{text.lower()}_dseg.nii.gz"
            table = labels if labels is not None else path.with_name(
                f"atlas-{text.lower()}_dseg.tsv"
            )
            return cls._from_file(path, table, name=text.lower())

        path = Path(name_or_path).expanduser()
        looks_like_path = path.exists() or text.endswith((".nii", ".nii.gz")) or (
            len(path.parts) > 1
        )
        if not looks_like_path:
            listing = ", ".join(known) if known else "none found in this installation"
            raise AnomalyInputError(
                f"atlas: unknown atlas '{text}' (shipped atlases: {listing}; "
                "or give the path of a label NIfTI)"
            )
        if not path.is_file():
            raise AnomalyInputError(f"{path}: atlas file not found")
        if labels is None:
            sibling = path.with_name(_strip_nifti_suffix(path) + ".tsv")
            labels = sibling if sibling.is_file() else None
        return cls._from_file(path, labels, name=_name_from_path(path))

    @classmethod
    def _from_file(
        cls,
        path: Path,
        labels: PathLike | pd.DataFrame | Mapping[int, str] | None,
        name: str,
    ) -> Atlas:
        # Check the dimensionality on the header first: the generic image gate may
        # squeeze or reject 4D images with a message that does not say "atlas".
        try:
            header_shape = nib.load(str(path)).shape
        except Exception as exc:  # nibabel raises several unrelated types
            reason = " ".join(str(exc).split())[:300]
            raise AnomalyInputError(f"{path}: cannot read atlas image ({reason})") from None
        if len(header_shape) > 3 and any(int(s) != 1 for s in header_shape[3:]):
            raise AnomalyInputError(
                f"{path}: an atlas must be a 3D label image, got shape {tuple(header_shape)} "
                "(probabilistic 4D atlases are not supported)"
            )
        img = load_image(path, name=str(path))
        table = _read_label_table(labels) if labels is not None else None
        atlas = cls.__new__(cls)
        atlas._setup(img, table, name, where=str(path))
        return atlas

    def _reconcile(self, table: pd.DataFrame | None, where: str) -> pd.DataFrame:
        """Make the table list exactly the labels present in the image."""
        present = np.unique(self._data)
        present = present[present != 0].astype(np.int64)
        if table is None:
            return pd.DataFrame(
                {"index": present, "name": [_auto_name(i) for i in present]}
            )
        known = set(table["index"].tolist())
        unnamed = [int(i) for i in present if int(i) not in known]
        if unnamed:
            shown = ", ".join(map(str, unnamed[:20])) + (" ..." if len(unnamed) > 20 else "")
            warnings.warn(
                f"{where}: {len(unnamed)} label(s) in the image are missing from the "
                f"label table and were named region_<index>: {shown}",
                UserWarning,
                stacklevel=3,
            )
        names = dict(zip(table["index"].tolist(), table["name"].tolist()))
        return pd.DataFrame(
            {
                "index": present,
                "name": [names.get(int(i), _auto_name(int(i))) for i in present],
            }
        )

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        zooms = tuple(round(float(z), 3) for z in self.image.header.get_zooms()[:3])
        return (
            f"Atlas(name={self.name!r}, n_regions={len(self.labels)}, "
            f"shape={tuple(self.image.shape)}, voxel_size={zooms})"
        )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the label image."""
        return tuple(int(s) for s in self.image.shape[:3])

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-MNI-mm affine of the label image."""
        return self.image.affine.copy()

    def label_array(self) -> np.ndarray:
        """Return the labels as a read-only int32 array (0 = background).

        Returns
        -------
        numpy.ndarray
            A read-only view; copy it before modifying.
        """
        view = self._data.view()
        view.flags.writeable = False
        return view

    # ------------------------------------------------------------------ regions
    def region_indices(self, pattern: str) -> list[int]:
        """Return the indices of regions whose name matches ``pattern``.

        Parameters
        ----------
        pattern : str
            Regular expression searched (not anchored) in the region names, ignoring
            case; a plain substring such as ``"thalamus"`` works as expected.

        Returns
        -------
        list of int
            Sorted region indices.

        Raises
        ------
        AnomalyInputError
            Invalid regular expression or no region matching.
        """
        try:
            regex = re.compile(pattern, flags=re.IGNORECASE)
        except re.error as exc:
            raise AnomalyInputError(
                f"pattern: invalid regular expression {pattern!r} ({exc})"
            ) from None
        hits = self.labels["name"].map(lambda name: regex.search(name) is not None)
        indices = self.labels.loc[hits, "index"].astype(int).tolist()
        if not indices:
            raise AnomalyInputError(
                f"pattern: no region of atlas '{self.name}' matches {pattern!r} "
                f"(examples of names: {', '.join(self.labels['name'].head(5))})"
            )
        return indices

    def region_mask(self, pattern: str) -> np.ndarray:
        """Return a boolean mask of the voxels in the regions matching ``pattern``.

        Parameters
        ----------
        pattern : str
            See :meth:`region_indices`.

        Returns
        -------
        numpy.ndarray of bool
            Same shape as the atlas image.
        """
        return np.isin(self._data, self.region_indices(pattern))

    # ------------------------------------------------------------------ resampling
    def resample_to(self, target: Grid | nib.spatialimages.SpatialImage | PathLike) -> Atlas:
        """Resample the atlas onto another grid, nearest neighbour.

        Parameters
        ----------
        target : Grid, nibabel image or path
            The grid to resample to (for an image: its affine and 3D shape).

        Returns
        -------
        Atlas
            A new atlas; its label table drops regions left with no voxel.

        Warns
        -----
        UserWarning
            Listing, by name, the regions that had voxels before and have none after
            (small regions on a coarse grid, or outside the target field of view).
        """
        shape, affine = _target_geometry(target)
        if _same_grid(self.shape, self.image.affine, shape, affine):
            return self._with_data(self._data.copy(), self.image.affine)
        resampled = resample_image(self.image, target_affine=affine, target_shape=shape, interpolation="nearest")
        data = np.asarray(resampled.dataobj).astype(np.int32, copy=False)
        new = self._with_data(data, affine)
        lost = self.labels[~self.labels["index"].isin(new.labels["index"])]
        if len(lost):
            listed = ", ".join(f"{n} ({i})" for i, n in zip(lost["index"], lost["name"]))
            warnings.warn(
                f"atlas '{self.name}': {len(lost)} region(s) have no voxel left after "
                f"nearest-neighbour resampling to the target grid: {listed}",
                UserWarning,
                stacklevel=2,
            )
        return new

    def _with_data(self, data: np.ndarray, affine: np.ndarray) -> Atlas:
        """New atlas with the same names on other data (labels already validated)."""
        atlas = Atlas.__new__(Atlas)
        atlas.name = self.name
        atlas.image = _label_image(data, affine)
        atlas._data = np.asarray(atlas.image.dataobj)
        present = np.unique(atlas._data)
        present = present[present != 0]
        atlas.labels = self.labels[self.labels["index"].isin(present)].reset_index(drop=True)
        return atlas

    # ------------------------------------------------------------------ summaries
    def summarise(
        self,
        stat_map: np.ndarray | ImageLike,
        *,
        threshold: float = 2.0,
        percentiles: Sequence[float] = (5, 95),
        mask: np.ndarray | ImageLike | None = None,
    ) -> pd.DataFrame:
        """Summarise a statistical map in every region of the atlas.

        Parameters
        ----------
        stat_map : numpy.ndarray, nibabel image or path
            An array with the atlas shape (assumed on the atlas grid), or an image,
            resampled onto the atlas grid with continuous interpolation if needed.
            NaN and infinite voxels are ignored.
        threshold : float, default 2.0
            ``frac_above`` is the fraction of voxels ``> threshold`` and
            ``frac_below`` the fraction ``< -threshold``.
        percentiles : sequence of float, default (5, 95)
            Percentiles (linear interpolation, as :func:`numpy.percentile`); columns
            named ``p05``, ``p95``...
        mask : numpy.ndarray, nibabel image or path, optional
            Only voxels where the mask is non-zero are summarised (e.g. the brain mask
            of the subject's field of view).

        Returns
        -------
        pandas.DataFrame
            One row per region, sorted by index: ``index, name, n_voxels, mean, min,
            max, p05, p95, frac_above, frac_below``. ``n_voxels`` counts the region's
            voxels (inside ``mask``), NaN ones included; the statistics use the finite
            voxels only and are NaN for a region without any.

        Raises
        ------
        AnomalyInputError
            Array of the wrong shape, or percentiles outside [0, 100].
        """
        qs = [float(q) for q in percentiles]
        values = self._on_grid(stat_map, "stat_map", interpolation="continuous")
        keep = None
        if mask is not None:
            keep = self._on_grid(mask, "mask", interpolation="nearest").astype(bool)
        # Minimum and maximum are the 0th and 100th percentiles.
        regions = RegionStats(self, keep)
        stats = regions.summarise(np.asarray(values, dtype=np.float64), percentiles=(0, 100, *qs),
                                  threshold=threshold)
        table = pd.DataFrame({"index": regions.index, "name": regions.names,
                              "n_voxels": regions.n_voxels, "mean": stats["mean"],
                              "min": stats["p00"], "max": stats["p100"]})
        for q in qs:
            table[percentile_name(q)] = stats[percentile_name(q)]
        table["frac_above"] = stats["frac_above"]
        table["frac_below"] = stats["frac_below"]
        return table

    def _on_grid(
        self, data: np.ndarray | ImageLike, what: str, interpolation: str
    ) -> np.ndarray:
        """Return ``data`` as an array on the atlas grid, resampling images if needed."""
        if isinstance(data, np.ndarray):
            if data.shape != self.shape:
                raise AnomalyInputError(
                    f"{what}: array shape {data.shape} does not match the atlas grid "
                    f"{self.shape}; pass an image to resample it"
                )
            return data
        img = read_map(data, what)
        if _same_grid(img.shape, img.affine, self.shape, self.image.affine):
            return np.asanyarray(img.dataobj)
        if interpolation == "nearest":
            return np.asarray(self._resample(img, "nearest", fill_value=0).dataobj)
        values = np.asarray(img.dataobj, dtype=np.float32)
        finite = np.isfinite(values)
        if finite.all():
            # NaN outside the source field of view: "not observed", not "zero".
            return np.asarray(self._resample(img, "continuous", fill_value=np.nan).dataobj)
        # Splines spread NaN over their whole support; interpolate the finite values
        # (NaN -> 0) and put NaN back where the nearest source voxel was not finite.
        filled = nib.Nifti1Image(np.where(finite, values, 0.0).astype(np.float32), img.affine)
        valid = nib.Nifti1Image(finite.astype(np.uint8), img.affine)
        out = np.asarray(self._resample(filled, "continuous", fill_value=np.nan).dataobj)
        keep = np.asarray(self._resample(valid, "nearest", fill_value=0).dataobj) > 0
        return np.where(keep, out, np.nan)

    def _resample(self, img: nib.spatialimages.SpatialImage, interpolation: str, fill_value: float):
        return resample_image(img, target_affine=self.image.affine, target_shape=self.shape,
                              interpolation=interpolation, fill_value=fill_value)

    # ------------------------------------------------------------------ painting
    def paint(self, values: Mapping[int, float] | pd.Series) -> nib.Nifti1Image:
        """Paint one value per region onto the atlas grid.

        Parameters
        ----------
        values : mapping or pandas.Series
            Region index -> value. Regions not given, and NaN values, are painted 0.

        Returns
        -------
        nibabel.Nifti1Image
            float32 image on the atlas grid, 0 in the background.

        Raises
        ------
        AnomalyInputError
            An index that is not a region of this atlas.
        """
        if isinstance(values, pd.Series):
            items = list(zip(values.index.tolist(), values.to_numpy().tolist()))
        else:
            items = list(values.items())
        known = set(self.labels["index"].tolist())
        unknown = [k for k, _ in items if k not in known]
        if unknown:
            raise AnomalyInputError(
                f"values: index(es) not in atlas '{self.name}': "
                f"{', '.join(map(str, unknown[:10]))}"
            )
        return paint_regions(self._data, self.image.affine, dict(items))


def grid_coverage(atlas: Atlas, target: Grid | nib.spatialimages.SpatialImage | PathLike) -> dict:
    """Which regions of ``atlas`` keep a voxel after nearest-neighbour resampling to ``target``.

    Coverage is a property of the grid (and the atlas), not of a subject: a normative
    model records it once when it is fitted, so that scoring need not repeat it.

    Parameters
    ----------
    atlas : Atlas
        The atlas at its own resolution.
    target : Grid, nibabel image or path
        The grid to resample to (for an image: its affine and 3D shape).

    Returns
    -------
    dict
        ``atlas`` (name), ``n_regions`` (in the atlas), ``n_kept`` (with at least one
        voxel on the grid) and ``lost``: ``[index, name]`` of each region left without
        a voxel, in index order.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the lost regions are what this returns
        kept = atlas.resample_to(target).labels["index"]
    lost = atlas.labels[~atlas.labels["index"].isin(kept)]
    return {"atlas": atlas.name, "n_regions": int(len(atlas.labels)), "n_kept": int(len(kept)),
            "lost": [[int(i), str(n)] for i, n in zip(lost["index"], lost["name"])]}


def _target_geometry(
    target: Grid | nib.spatialimages.SpatialImage | PathLike,
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a resampling target."""
    if isinstance(target, Grid):
        return tuple(int(s) for s in target.shape), np.asarray(target.affine, dtype=float)
    if isinstance(target, nib.spatialimages.SpatialImage):
        return tuple(int(s) for s in target.shape[:3]), np.asarray(target.affine, dtype=float)
    if isinstance(target, (str, Path)):
        img = load_image(target, name="target")
        return tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=float)
    raise AnomalyInputError(
        f"target: expected a Grid, a nibabel image or a path, got {type(target).__name__}"
    )
