"""Per-subject figures: glass brains, peak slices, region bars and training curves.

Every function writes one PNG and returns its path. Figures are built on a bare
:class:`matplotlib.figure.Figure` that pyplot never sees, so they work with any backend
(and without a display), are safe to call from worker threads, and cannot leak open
pyplot figures. Files are written through :func:`anomaly.io.atomic_path`: a crash never
leaves a truncated PNG behind.

Conventions (DESIGN.md): signed maps are drawn with ``plot_abs=False`` and a colour bar
symmetric around 0; non-negative anomaly maps with a sequential colour map.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from anomaly.constants import Z_THRESHOLD
from anomaly.io import AnomalyInputError, atomic_path, check_columns, read_table
from anomaly.report._docs import fill_doc

__all__ = [
    "GlassBrainRenderer",
    "plot_anomaly_glass_brain",
    "plot_loss_curve",
    "plot_peak_slices",
    "plot_region_bars",
    "plot_signed_glass_brain",
]

PathLike = Union[str, Path]
ImageLike = Union[PathLike, nib.spatialimages.SpatialImage]
Threshold = Union[float, str]

# 100 dpi keeps a glass brain around 50 kB and fast to render; enough for a report.
DEFAULT_DPI = 100
GLASS_FIGSIZE = (7.0, 2.6)
SLICES_FIGSIZE = (8.0, 3.0)
POSITIVE_COLOR = "#c0392b"
NEGATIVE_COLOR = "#2e6fb5"


# ---------------------------------------------------------------- helpers
def _new_figure(figsize: Sequence[float]) -> Figure:
    """A figure unknown to pyplot: nothing to close, nothing global to leak."""
    return Figure(figsize=tuple(figsize))


def _save(fig: Figure, out_png: PathLike, dpi: int) -> Path:
    """Write ``fig`` as PNG atomically and release its artists."""
    out = Path(out_png)
    try:
        with atomic_path(out) as tmp:
            # format= because the temporary name must not decide the format.
            fig.savefig(tmp, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    finally:
        fig.clear()  # drop references to the (large) image arrays at once
    return out


def _read_map(img: ImageLike, what: str) -> nib.Nifti1Image:
    """Read a 3D map as float32 with NaN/Inf set to 0 (nothing to draw there).

    The input gate's NaN policy (refuse NaN inside the brain) is for raw scans; derived
    maps legitimately hold NaN where nothing was measured.
    """
    from nilearn.image import check_niimg_3d

    try:
        img = check_niimg_3d(img, dtype=None)
    except (TypeError, ValueError, OSError, nib.filebasedimages.ImageFileError) as exc:
        message = " ".join(str(exc).split())[:300]
        given = str(img) if isinstance(img, (str, Path)) else type(img).__name__
        raise AnomalyInputError(f"{what}: cannot use {given} as a 3D image ({message})") from None
    data = np.asarray(img.get_fdata(dtype=np.float32))
    data = np.where(np.isfinite(data), data, np.float32(0.0))
    return nib.Nifti1Image(data, img.affine)


def _auto_threshold(data: np.ndarray) -> float:
    """95th percentile of the non-zero absolute values: shows the top 5 % of voxels."""
    values = np.abs(data[data != 0])
    if values.size == 0:
        return 1.0  # empty map: any positive threshold draws nothing
    return float(np.percentile(values, 95))


def _resolve_threshold(threshold: Threshold, data: np.ndarray, what: str = "threshold") -> float:
    if isinstance(threshold, str):
        if threshold != "auto":
            raise AnomalyInputError(f"{what}: expected a number or 'auto', got {threshold!r}")
        return _auto_threshold(data)
    value = float(threshold)
    if not np.isfinite(value) or value < 0:
        raise AnomalyInputError(f"{what}: expected a finite number >= 0, got {threshold!r}")
    return value


def _colour_limit(data: np.ndarray, threshold: float, vmax: float | None) -> float:
    """Top of the colour bar: the largest |value|, above the threshold."""
    if vmax is not None:
        vmax = float(vmax)
        if not np.isfinite(vmax) or vmax <= 0:
            raise AnomalyInputError(f"vmax: expected a positive number, got {vmax!r}")
        return vmax
    peak = float(np.abs(data).max()) if data.size else 0.0
    # A colour bar must span more than the threshold, even for an empty map.
    return max(peak, threshold * 1.05, 1e-6)


def _peak_mm(img: nib.Nifti1Image) -> tuple[tuple[float, float, float], float]:
    """World coordinates (MNI mm) and value of the largest |value| voxel."""
    data = np.asarray(img.dataobj)
    ijk = np.unravel_index(int(np.argmax(np.abs(data))), data.shape)
    xyz = nib.affines.apply_affine(img.affine, ijk)
    return (float(xyz[0]), float(xyz[1]), float(xyz[2])), float(data[ijk])


# ---------------------------------------------------------------- glass brains
@fill_doc
def plot_anomaly_glass_brain(
    anomaly_img: ImageLike,
    out_png: PathLike,
    *,
    title: str | None = None,
    threshold: Threshold = "auto",
    vmax: float | None = None,
    cmap: str = "hot",
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Glass-brain view of a non-negative anomaly map (higher = more abnormal).

    Parameters
    ----------
    anomaly_img : path or nibabel image
        3D map, >= 0 (e.g. ``*_stat-anomaly_statmap.nii.gz``). NaN is drawn as 0.
    %(out_png)s
    %(title)s
    %(threshold_auto)s
    %(vmax)s
    cmap : str, default "hot"
        Sequential matplotlib colour map, drawn on a black background so that the
        brightest (most abnormal) values stay visible.
    %(dpi)s

    Returns
    -------
    %(returns_png)s

    Raises
    ------
    AnomalyInputError
        Unreadable image, a map with negative values (use
        :func:`plot_signed_glass_brain`), or a bad threshold.
    """
    img, overlay = _anomaly_glass_args(anomaly_img, threshold, vmax, cmap)
    return _draw_glass_brain(img, overlay, title=title, signed=False, out_png=out_png, dpi=dpi)


def _anomaly_glass_args(anomaly_img: ImageLike, threshold: Threshold, vmax: float | None,
                        cmap: str) -> tuple[nib.Nifti1Image, dict]:
    """Checked image and overlay settings of an anomaly glass brain."""
    img = _read_map(anomaly_img, "anomaly_img")
    data = np.asarray(img.dataobj)
    if data.min() < -1e-6:
        raise AnomalyInputError(
            f"anomaly_img: map has negative values (min {data.min():.3g}); an anomaly map is "
            ">= 0, use plot_signed_glass_brain for signed (z) maps"
        )
    thr = _resolve_threshold(threshold, data)
    top = _colour_limit(data, thr, vmax)
    # nearest: faster, and the maximum-intensity projection hides the difference.
    return img, {"threshold": thr, "vmin": 0.0, "vmax": top, "cmap": cmap,
                 "resampling_interpolation": "nearest"}


@fill_doc
def plot_signed_glass_brain(
    z_img: ImageLike,
    out_png: PathLike,
    *,
    title: str | None = None,
    threshold: float = Z_THRESHOLD,
    vmax: float | None = None,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Glass-brain view of a signed map (z map): both tails, symmetric colour bar.

    Parameters
    ----------
    z_img : path or nibabel image
        3D signed map (e.g. ``*_mod-<M>_stat-z_statmap.nii.gz``). NaN is drawn as 0.
    %(out_png)s
    %(title)s
    threshold : float, default 2.0 (:data:`anomaly.constants.Z_THRESHOLD`)
        Voxels with ``|z| <= threshold`` are not drawn.
    vmax : float, optional
        The colour bar spans ``[-vmax, vmax]``; default the largest ``|z|``.
    %(dpi)s

    Returns
    -------
    %(returns_png)s

    Notes
    -----
    The projection keeps, along each line of sight, the value of largest magnitude
    with its sign (``plot_abs=False``), so decreases and increases stay apart.
    """
    img, overlay = _signed_glass_args(z_img, threshold, vmax)
    return _draw_glass_brain(img, overlay, title=title, signed=True, out_png=out_png, dpi=dpi)


def _draw_glass_brain(img: nib.Nifti1Image, overlay: dict, *, title: str | None, signed: bool,
                      out_png: PathLike, dpi: int) -> Path:
    """One glass brain, black background; signed maps keep their sign (plot_abs=False)."""
    from nilearn import plotting

    fig = _new_figure(GLASS_FIGSIZE)
    with warnings.catch_warnings():
        # nilearn warns "empty mask" for a map with nothing above the threshold: a
        # healthy-looking subject is a valid result, not a problem.
        warnings.filterwarnings("ignore", message=".*empty mask.*")
        plotting.plot_glass_brain(img, figure=fig, title=title, plot_abs=not signed,
                                  symmetric_cbar=signed, black_bg=True, colorbar=True, **overlay)
    return _save(fig, out_png, dpi)


def _signed_glass_args(z_img: ImageLike, threshold: float, vmax: float | None
                       ) -> tuple[nib.Nifti1Image, dict]:
    """Checked image and overlay settings of a signed glass brain."""
    img = _read_map(z_img, "z_img")
    data = np.asarray(img.dataobj)
    thr = _resolve_threshold(threshold, data)
    top = _colour_limit(data, thr, vmax)
    return img, {"threshold": thr, "vmin": -top, "vmax": top, "cmap": "cold_hot",
                 "resampling_interpolation": "nearest"}


class GlassBrainRenderer:
    """Draw many glass brains of one kind quickly, reusing the brain outline.

    nilearn draws the glass-brain outline as some 2,400 matplotlib patches, and building
    them takes most of the time of :func:`plot_anomaly_glass_brain` (about 0.7 s of
    1 s). A renderer builds the outline once; each :meth:`plot` adds the map, writes
    the PNG and removes the map again. The PNGs are the same as those of
    :func:`plot_anomaly_glass_brain` (``kind="anomaly"``) and
    :func:`plot_signed_glass_brain` (``kind="signed"``) with the same arguments.

    Parameters
    ----------
    kind : {"anomaly", "signed"}
        Non-negative anomaly maps or signed (z) maps.
    dpi : int, default 100
        Resolution of the PNGs.

    Notes
    -----
    A renderer keeps one matplotlib figure; it is not thread-safe (use one per thread).
    """

    def __init__(self, kind: str = "anomaly", *, dpi: int = DEFAULT_DPI) -> None:
        if kind not in ("anomaly", "signed"):
            raise AnomalyInputError(f"kind: expected 'anomaly' or 'signed', got {kind!r}")
        self.kind = kind
        self.dpi = dpi
        self._display = None

    def _build(self) -> None:
        from nilearn import plotting

        fig = _new_figure(GLASS_FIGSIZE)
        # colorbar=True reserves the colour bar's room exactly as for a plotted map.
        self._display = plotting.plot_glass_brain(
            None, figure=fig, plot_abs=self.kind == "anomaly", black_bg=True, colorbar=True)
        self._figure = fig
        self._axes = list(fig.axes)
        self._children = {id(ax): set(ax.get_children()) for ax in self._axes}

    def plot(self, img: ImageLike, out_png: PathLike, *, title: str | None = None,
             threshold: Threshold | None = None, vmax: float | None = None,
             cmap: str = "hot") -> Path:
        """Write one glass brain; arguments as for the matching ``plot_*`` function.

        ``threshold`` defaults to "auto" for anomaly maps and 2.0 for signed maps;
        ``cmap`` applies to anomaly maps only.
        """
        if self.kind == "anomaly":
            img, overlay = _anomaly_glass_args(img, "auto" if threshold is None else threshold,
                                               vmax, cmap)
        else:
            img, overlay = _signed_glass_args(img, Z_THRESHOLD if threshold is None else threshold, vmax)
        if self._display is None:
            self._build()
        display, fig = self._display, self._figure
        interpolation = overlay.pop("resampling_interpolation")
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*empty mask.*")
                # What nilearn's plot_glass_brain does after building the display.
                display.add_overlay(img, colorbar=True, cbar_vmin=overlay["vmin"],
                                    cbar_vmax=overlay["vmax"], interpolation="nearest",
                                    resampling_interpolation=interpolation, **overlay)
                if title:
                    display.title(title)
            out = Path(out_png)
            with atomic_path(out) as tmp:
                fig.savefig(tmp, format="png", dpi=self.dpi, facecolor=fig.get_facecolor())
        finally:
            self._reset()
        return out

    def _reset(self) -> None:
        """Remove everything the last map added: images, title, colour bar."""
        fig = self._figure
        for ax in list(fig.axes):
            if ax not in self._axes:
                ax.remove()  # the colour bar
        for ax in self._axes:
            keep = self._children[id(ax)]
            for artist in ax.get_children():
                if artist not in keep:
                    artist.remove()
        self._display._colorbar = False  # nilearn refuses a second colour bar otherwise


# ---------------------------------------------------------------- slices
@fill_doc
def plot_peak_slices(
    stat_img: ImageLike,
    background_img: ImageLike | None,
    out_png: PathLike,
    *,
    title: str | None = None,
    threshold: Threshold = "auto",
    vmax: float | None = None,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Orthogonal slices through the voxel of largest ``|value|`` of a map.

    Parameters
    ----------
    stat_img : path or nibabel image
        3D map. Signed maps get the symmetric ``cold_hot`` colour map, non-negative
        maps the sequential ``hot`` one.
    background_img : path, nibabel image or None
        Anatomy drawn underneath (e.g. the subject's T1w on the model grid); None uses
        nilearn's bundled MNI152 template (no download).
    %(out_png)s
    title : str, optional
        Figure title; the peak value and its MNI coordinates are appended.
    %(threshold_auto)s
    %(vmax)s
    %(dpi)s

    Returns
    -------
    %(returns_png)s
    """
    from nilearn import plotting

    img, settings = _peak_slices_args(stat_img, background_img, title, threshold, vmax)
    fig = _new_figure(SLICES_FIGSIZE)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*empty mask.*")
        plotting.plot_stat_map(img, display_mode="ortho", figure=fig, black_bg=True, colorbar=True,
                               resampling_interpolation="nearest",  # show voxels, not spline ringing
                               **settings)
    return _save(fig, out_png, dpi)


def _peak_slices_args(stat_img: ImageLike, background_img: ImageLike | None, title: str | None,
                      threshold: Threshold, vmax: float | None) -> tuple[nib.Nifti1Image, dict]:
    """Checked map and the plot_stat_map settings of :func:`plot_peak_slices`."""
    img = _read_map(stat_img, "stat_img")
    data = np.asarray(img.dataobj)
    thr = _resolve_threshold(threshold, data)
    top = _colour_limit(data, thr, vmax)
    (x, y, z), peak = _peak_mm(img)
    label = f"peak {peak:.2f} at ({x:.0f}, {y:.0f}, {z:.0f}) mm"
    if peak == 0:
        # An all-zero map has no peak: cut through the middle of the brain instead.
        (x, y, z), label = (0.0, -18.0, 10.0), "empty map"
    signed = bool(data.min() < 0)
    settings = {"cut_coords": (x, y, z), "title": f"{title}: {label}" if title else label,
                "threshold": thr, "vmin": -top if signed else 0.0, "vmax": top,
                "cmap": "cold_hot" if signed else "hot", "symmetric_cbar": signed}
    # Without a background, nilearn's default is its bundled MNI152 template.
    if background_img is not None:
        settings["bg_img"] = _read_map(background_img, "background_img")
    return img, settings


# ---------------------------------------------------------------- tables
@fill_doc
def plot_region_bars(
    df: pd.DataFrame,
    value_col: str,
    out_png: PathLike,
    *,
    top: int = 10,
    name_col: str = "name",
    title: str | None = None,
    xlabel: str | None = None,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Horizontal bars of the ``top`` regions with the largest ``|value_col|``.

    Parameters
    ----------
    df : pandas.DataFrame
        A region table (one row per region), e.g. from :func:`anomaly.atlas.region_table`
        or a ``*_regions.tsv``.
    value_col : str
        Column to rank and draw. Rows with NaN are left out.
    %(out_png)s
    top : int, default 10
        Number of regions drawn, the largest at the top.
    name_col : str, default "name"
        Column with the region names.
    %(title)s
    xlabel : str, optional
        X-axis label; default ``value_col``.
    %(dpi)s

    Returns
    -------
    %(returns_png)s
    """
    table = _top_regions(df, value_col, name_col, top)
    fig = _new_figure((6.5, 0.35 * max(len(table), 1) + 1.2))
    ax = fig.add_subplot()
    colours = [POSITIVE_COLOR if v >= 0 else NEGATIVE_COLOR for v in table["value"]]
    ax.barh(np.arange(len(table)), table["value"], color=colours)
    ax.set_yticks(np.arange(len(table)), labels=table["name"], fontsize=8)
    ax.axvline(0.0, color="0.3", linewidth=0.8)
    ax.set_xlabel(xlabel or value_col)
    if title:
        ax.set_title(title, fontsize=10)
    if table.empty:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _save(fig, out_png, dpi)


def _top_regions(df: pd.DataFrame, value_col: str, name_col: str, top: int) -> pd.DataFrame:
    """Columns ``name`` and ``value`` of the ``top`` finite rows by ``|value|``, largest last."""
    for col in (value_col, name_col):
        if col not in df.columns:
            raise AnomalyInputError(
                f"df: no column {col!r} (columns: {', '.join(map(str, df.columns))})"
            )
    if int(top) < 1:
        raise AnomalyInputError(f"top: expected a positive integer, got {top!r}")
    values = pd.to_numeric(df[value_col], errors="coerce")
    table = pd.DataFrame({"name": df[name_col].astype(str), "value": values}).dropna()
    table = table.reindex(table["value"].abs().sort_values(ascending=False).index)
    return table.head(int(top)).iloc[::-1]  # barh draws bottom-up


@fill_doc
def plot_loss_curve(
    csv_or_df: PathLike | pd.DataFrame,
    out_png: PathLike,
    *,
    title: str | None = None,
    log_y: bool | str = "auto",
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Training and validation loss against epochs, best validation epoch marked.

    Parameters
    ----------
    csv_or_df : path or pandas.DataFrame
        Training log with columns ``epoch``, ``train_loss`` and optionally
        ``val_loss``; a ``.tsv`` file is read tab-separated, anything else as CSV.
    %(out_png)s
    %(title)s
    log_y : bool or "auto", default "auto"
        Logarithmic loss axis; ``"auto"`` uses it when all losses are positive and
        span more than two decades.
    %(dpi)s

    Returns
    -------
    %(returns_png)s
    """
    epoch, series = _read_training_log(csv_or_df)
    finite = np.concatenate([s[np.isfinite(s)].to_numpy() for s in series.values()])
    if log_y == "auto":
        log_y = bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > 100)

    fig = _new_figure((6.0, 3.6))
    ax = fig.add_subplot()
    colours = {"train": "#1f77b4", "validation": "#d62728"}
    for label, values in series.items():
        ax.plot(epoch, values, label=label, color=colours[label], linewidth=1.5)
    val = series.get("validation")
    if val is not None and val.notna().any():
        _mark_best(ax, epoch, val, colours["validation"])
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png, dpi)


def _read_training_log(csv_or_df: PathLike | pd.DataFrame) -> tuple[pd.Series, dict[str, pd.Series]]:
    """Epochs and the loss series (``train``, and ``validation`` when logged) of a training log."""
    if isinstance(csv_or_df, pd.DataFrame):
        log, where = csv_or_df, "training log"
    else:
        path = Path(csv_or_df)
        where = str(path)
        log = read_table(path, "training log", sep="\t" if path.suffix == ".tsv" else ",", na_values=["n/a"])
    check_columns(log, ("epoch", "train_loss"), where, "training log")
    if log.empty:
        raise AnomalyInputError(f"{where}: training log has no rows")
    epoch = pd.to_numeric(log["epoch"], errors="coerce")
    series = {"train": pd.to_numeric(log["train_loss"], errors="coerce")}
    if "val_loss" in log.columns:
        series["validation"] = pd.to_numeric(log["val_loss"], errors="coerce")
    return epoch, series


def _mark_best(ax, epoch: pd.Series, val: pd.Series, colour: str) -> None:
    """Dot and label at the epoch of lowest validation loss."""
    best = int(val.idxmin())
    ax.scatter([epoch[best]], [val[best]], color=colour, zorder=3)
    ax.annotate(f"best {val[best]:.3g} (epoch {epoch[best]:g})", (epoch[best], val[best]),
                textcoords="offset points", xytext=(6, 8), fontsize=8)
