"""Self-contained HTML pages: one report per subject, an index linking them, the demo's page.

A report is a single HTML file that opens offline in any browser and can be mailed or
archived as is: figures are embedded as base64 ``data:`` URIs, the CSS is inline, and
there is no JavaScript, web font or external URL. Every piece of text that comes from
data (subject labels, region names, dictionary values) is HTML-escaped.

The functions take plain dictionaries and tables so that they do not depend on how the
scores were computed; see :func:`render_subject_report` for the keys they understand.
Every page is built from the same pieces: :func:`_page` (head and inline CSS),
:func:`_header`, :func:`_section`, :func:`_table` and :func:`_footer`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import numbers
import os
import struct
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd

from anomaly import __version__
from anomaly.constants import AWARENESS_PERCENT, CRS_MAX
from anomaly.io import AnomalyInputError, write_text

# AWARENESS_PERCENT is re-exported: it used to be defined here.
__all__ = ["AWARENESS_PERCENT", "render_demo_index", "render_index", "render_qc_page", "render_subject_report"]

PathLike = Union[str, Path]

STENDER_2016 = (
    "Stender J, Mortensen KN, Thibaut A, Darkner S, Laureys S, Gjedde A, Kupers R. "
    "The minimal energetic requirement of sustained awareness after brain injury. "
    "Current Biology 2016;26(11):1494-1499. doi:10.1016/j.cub.2016.04.024"
)
N_TOP_REGIONS = 10
#: Banner of the pages that show maps and numbers of subjects.
RESEARCH_ONLY = "For research use: the maps and numbers are not a diagnosis."

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_MAGIC = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8"}

_CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dde5; --accent: #1f4e8c;
        --warn-bg: #fff4e5; --warn-line: #e69a28; --ok-bg: #eef6ee; --ok-line: #4a9a4a; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1100px; padding: 1.5rem 1.5rem 3rem;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); background: #fff; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .6rem; padding-bottom: .2rem;
     border-bottom: 2px solid var(--line); color: var(--accent); }
p { margin: .4rem 0; }
.muted, footer { color: var(--muted); font-size: .88rem; }
.banner { background: #f3f5f9; border-left: 4px solid var(--accent); padding: .5rem .8rem; }
.flag { padding: .6rem .9rem; border-left: 4px solid; margin: .6rem 0; }
.flag.warn { background: var(--warn-bg); border-color: var(--warn-line); }
.flag.ok { background: var(--ok-bg); border-color: var(--ok-line); }
.big { font-size: 1.5rem; font-weight: 600; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 0 2rem; }
table { border-collapse: collapse; margin: .4rem 0; font-size: .9rem; }
th, td { border-bottom: 1px solid var(--line); padding: .25rem .6rem; text-align: left;
         vertical-align: top; }
th { background: #f3f5f9; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { width: 15rem; background: none; color: var(--muted); font-weight: 500; }
.scroll { overflow-x: auto; }
figure { margin: 1rem 0 1.5rem; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line);
             box-sizing: content-box; /* the border must not shrink (blur) the figure */ }
figcaption { color: var(--muted); font-size: .9rem; margin-top: .3rem; }
figcaption b { color: var(--fg); }
pre { background: #f3f5f9; padding: .6rem .8rem; overflow-x: auto; font-size: .85rem; }
@media print { body { max-width: none; } figure { break-inside: avoid; } }
"""


# ---------------------------------------------------------------- formatting
def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isnan(value)


def _fmt(value: Any) -> str:
    """Plain-text rendering of a value (not yet escaped)."""
    if _is_missing(value):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:.1f}"
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
        return ", ".join(_fmt(v) for v in items) if items else "none"
    return str(value)


def _e(value: Any) -> str:
    """Format and HTML-escape."""
    return html.escape(_fmt(value), quote=True)


def _label(key: Any) -> str:
    """Readable, escaped label for a dictionary key: "pet_reference" -> "pet reference"."""
    return html.escape(str(key).replace("_", " "), quote=True)


def _kv_table(items: Mapping[str, Any], skip: Iterable[str] = (),
              label: Callable[[Any], str] = _label) -> str:
    """Two-column table of ``items``; ``label`` turns a key into escaped header text."""
    skip = set(skip)
    rows = [
        f"<tr><th scope=\"row\">{label(k)}</th><td>{_e(v)}</td></tr>"
        for k, v in items.items()
        if k not in skip
    ]
    if not rows:
        return ""
    return "<table class=\"kv\">" + "".join(rows) + "</table>"


def _escape_key(key: Any) -> str:
    """A dictionary key as escaped header text, spelled as given."""
    return html.escape(str(key), quote=True)


def _norm_key(key: Any) -> str:
    return str(key).strip().lower().replace(" ", "_").replace("-", "_")


def _first(mapping: Mapping[str, Any], *keys: str) -> tuple[Any, Any]:
    """First key present (and not missing) among ``keys`` and its value.

    Keys match ignoring case and the spelling of separators ("modalities missing"
    matches "modalities_missing"); the key is returned as spelled in ``mapping``.
    """
    spelled = {}
    for key in mapping:
        spelled.setdefault(_norm_key(key), key)
    for wanted in keys:
        key = spelled.get(_norm_key(wanted))
        if key is not None and not _is_missing(mapping[key]):
            return key, mapping[key]
    return None, None


def _as_float(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AnomalyInputError(f"{what}: expected a number, got {value!r}") from None


# ---------------------------------------------------------------- page pieces
def _page(title: str, body: str) -> str:
    """A whole HTML document: head with the inline CSS, then ``body`` (trusted HTML)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<meta name=\"generator\" content=\"anomaly {html.escape(__version__)}\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _write_page(out_html: PathLike, title: str, body: Iterable[str]) -> Path:
    """Write a page of the parts ``body`` (trusted HTML), one per line, atomically."""
    return write_text(_page(title, "\n".join(body)), out_html)


def _header(title: str, banner: str) -> str:
    """Page heading (``title``, escaped) and its banner (escaped text)."""
    return (f"<header><h1>{html.escape(title)}</h1>\n"
            f"<p class=\"banner\">{html.escape(banner)}</p></header>")


def _section(ident: str, heading: str, content: str) -> str:
    """``<section id=ident>`` with an ``<h2>`` heading and ``content`` (trusted HTML)."""
    return f"<section id=\"{ident}\"><h2>{html.escape(heading)}</h2>{content}</section>"


def _cell(value: Any) -> str:
    """One ``<td>`` of a data table: escaped, numbers right-aligned."""
    numeric = isinstance(value, numbers.Number) and not isinstance(value, bool)
    cls = " class=\"num\"" if numeric else ""
    return f"<td{cls}>{_e(value)}</td>"


def _table(columns: Iterable[Any], rows: Iterable[str]) -> str:
    """Scrollable table with one header cell per column and ``rows`` (``<tr>`` HTML)."""
    header = "".join(f"<th scope=\"col\">{_label(c)}</th>" for c in columns)
    return (f"<div class=\"scroll\"><table><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _href(target: PathLike, base: Path) -> str:
    """Escaped, URL-quoted link from the folder ``base`` to ``target``.

    Relative links keep an output folder movable as a whole; a relative ``target`` is
    taken as relative to ``base`` already.
    """
    path = Path(target)
    rel = os.path.relpath(path.resolve(), base) if path.is_absolute() else path
    return html.escape(urllib.parse.quote(Path(rel).as_posix()), quote=True)


def _footer() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<footer><p>Generated by anomaly {html.escape(__version__)} on {stamp}. "
        "Research software: not a medical device, not for clinical decisions.</p></footer>"
    )


# ---------------------------------------------------------------- figures
def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG header (lets the browser lay out before decoding)."""
    if len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None


def _figure_html(title: str, spec: PathLike | tuple[PathLike, str]) -> str:
    """One <figure> with the image embedded as a data URI."""
    if isinstance(spec, tuple):
        path, caption = Path(spec[0]), str(spec[1])
    else:
        path, caption = Path(spec), ""
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise AnomalyInputError(
            f"{path}: report figures must be PNG or JPEG files, got '{path.suffix}'"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AnomalyInputError(f"{path}: report figure not found") from None
    except OSError as exc:
        raise AnomalyInputError(f"{path}: cannot read report figure ({exc.strerror})") from None
    if not data.startswith(_MAGIC[mime]):
        raise AnomalyInputError(f"{path}: not a valid {mime.split('/')[1].upper()} file")
    size = _png_size(data) if mime == "image/png" else None
    dims = f" width=\"{size[0]}\" height=\"{size[1]}\"" if size else ""
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    text = f"<b>{html.escape(title)}.</b>" + (f" {html.escape(caption)}" if caption else "")
    return (
        f"<figure><img src=\"{uri}\" alt=\"{html.escape(title, quote=True)}\"{dims}>"
        f"<figcaption>{text}</figcaption></figure>"
    )


# ---------------------------------------------------------------- sections
def _metabolism_html(metabolism: Mapping[str, Any] | None) -> str:
    heading = "Global cortical metabolism"
    if metabolism is None:
        return _section("metabolism", heading,
                        "<p class=\"muted\">No PET image: global cortical metabolism was not computed.</p>")
    key, percent = _first(metabolism, "percent", "global_cortical_pet_percent")
    ref_key, reference = _first(metabolism, "reference", "pet_reference", "reference_region")
    shown = {key, ref_key}  # keys said in the text, left out of the table below
    parts = []
    if key is None:
        parts.append("<p class=\"muted\">Global cortical metabolism is not available.</p>")
    else:
        percent = _as_float(percent, "global_metabolism")
        ref_text = f" (reference region: {_e(reference)})" if ref_key else ""
        ci_key, interval = _first(metabolism, "interval", "global_cortical_pet_percent_ci95")
        ci_text, straddles = "", False
        if ci_key is not None:  # from the normative sample (anomaly.atlas.petlevels)
            if not isinstance(interval, (list, tuple)) or len(interval) != 2:
                raise AnomalyInputError(f"global_metabolism: expected a (low, high) interval, got {interval!r}")
            low, high = (_as_float(v, "global_metabolism") for v in interval)
            ci_text = f"; 95% interval {low:.0f}&ndash;{high:.0f}%"
            straddles = low < AWARENESS_PERCENT <= high
        parts.append(
            f"<p><span class=\"big\">{percent:.0f}%</span> of the normative mean cortical "
            f"metabolism{ref_text}{ci_text}.</p>"
        )
        measure_key, measure = _first(metabolism, "measure", "global_cortical_pet_measure")
        if measure_key is not None:
            parts.append(f"<p class=\"muted\">Measured as: {_e(measure)}.</p>")
        shown.update((ci_key, measure_key))
        level = f"{AWARENESS_PERCENT:.0f}%"
        if percent < AWARENESS_PERCENT:
            parts.append(
                f"<p class=\"flag warn\">Below the ~{level} level associated with awareness: "
                "Stender et al. (2016) found that patients who kept conscious awareness after "
                f"brain injury had cortical metabolism above about {level} of normal. This is "
                "a research measure from one scan; it is not a diagnosis.</p>"
            )
        else:
            parts.append(
                f"<p class=\"flag ok\">At or above the ~{level} level associated with awareness "
                "(Stender et al., 2016). This is a research measure from one scan; it does not "
                "establish that the patient is aware.</p>"
            )
        if straddles:
            parts.append(f"<p class=\"flag warn\">The 95% interval includes the ~{level} level: this scan "
                         "alone does not place the patient on either side of it.</p>")
        parts.append(f"<p class=\"muted\">Reference: {html.escape(STENDER_2016)}.</p>")
    parts.append(_kv_table(metabolism, skip=shown))
    return _section("metabolism", heading, "".join(parts))


def _crs_html(crs: Mapping[str, Any] | None) -> str:
    if crs is None:
        return _section("crs", "CRS-R estimate",
                        "<p class=\"muted\">No CRS-R model given: no estimate was computed.</p>")
    pred_key, pred = _first(crs, "crs_pred", "pred", "prediction")
    low_key, lower = _first(crs, "crs_lower", "lower")
    up_key, upper = _first(crs, "crs_upper", "upper")
    lvl_key, level = _first(crs, "interval_level", "level", "coverage")
    parts = []
    if pred_key is None:
        parts.append("<p class=\"muted\">The CRS-R model gave no prediction for this subject.</p>")
    else:
        pred = _as_float(pred, "crs")
        text = f"<span class=\"big\">{pred:.1f}</span> / {CRS_MAX} (predicted CRS-R total)"
        if low_key and up_key:
            lvl = ""
            if lvl_key:
                lvl_value = _as_float(level, "crs")
                lvl = f"{lvl_value * 100 if lvl_value <= 1 else lvl_value:.0f}% "
            text += (
                f"; {lvl}interval {_as_float(lower, 'crs'):.1f} to {_as_float(upper, 'crs'):.1f}"
            )
        parts.append(f"<p>{text}.</p>")
        parts.append(
            "<p class=\"muted\">A research estimate from imaging, with noisy training labels "
            "(a single bedside CRS-R misclassifies about one patient in three). Compare it "
            "with repeated clinical assessments; do not use it alone.</p>"
        )
    parts.append(_kv_table(crs, skip={pred_key, low_key, up_key, lvl_key}))
    return _section("crs", "CRS-R estimate", "".join(parts))


def _regions_html(top_regions: pd.DataFrame | None) -> str:
    if top_regions is None or len(top_regions) == 0:
        return _section("regions", "Most abnormal regions", "<p class=\"muted\">No region table.</p>")
    shown = top_regions.head(N_TOP_REGIONS)
    note = (
        f"<p class=\"muted\">The {len(shown)} most abnormal of {len(top_regions)} atlas regions.</p>"
        if len(top_regions) > len(shown)
        else ""
    )
    if "pet_focal_logratio_z" in shown.columns:
        note += ("<p class=\"muted\">pet focal logratio: log(region PET / the subject's own cortical mean PET) "
                 "minus the controls' mean of the same ratio (-0.1 is about 10% below what the rest of the "
                 "cortex predicts); its z divides by the controls' SD. A global drop of cortical metabolism "
                 "leaves cortical regions' values unchanged and raises deep grey matter's.</p>")
    rows = ["<tr>" + "".join(_cell(v) for v in record) + "</tr>"
            for record in shown.itertuples(index=False, name=None)]
    return _section("regions", "Most abnormal regions", note + _table(shown.columns, rows))


def _qc_html(qc: Mapping[str, Any]) -> str:
    parts = []
    _, missing = _first(qc, "modalities_missing", "missing_modalities")
    if isinstance(missing, str) and missing.strip().lower() in ("", "none", "n/a"):
        missing = None
    if missing is not None and (not hasattr(missing, "__len__") or len(missing)):
        parts.append(
            f"<p class=\"flag warn\">Missing modalities: {_e(missing)}. The maps and the "
            "estimate use the modalities present only.</p>"
        )
    parts.append(_kv_table(qc) or "<p class=\"muted\">No quality checks recorded.</p>")
    return _section("qc", "Quality checks", "".join(parts))


def _qc_banner(qc: Mapping[str, Any]) -> str:
    """Banner above a report when quality control warned, or refused and was overridden.

    Reads the ``QC decision``, ``QC forced`` and ``QC warnings`` keys of ``qc``
    (:mod:`anomaly.qc`); empty when the subject passed or no QC was recorded.
    """
    forced = bool(qc.get("QC forced"))
    warnings = qc.get("QC warnings") or []
    if not forced and not warnings:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
    head = ("Scored with --force although quality control refused an image: the maps and numbers "
            "below may be meaningless." if forced else
            "Quality control warnings: read the maps and numbers below with care.")
    return f"<div class=\"flag warn\" id=\"qc-banner\"><p><b>{html.escape(head)}</b></p><ul>{items}</ul></div>"


# ---------------------------------------------------------------- public API
def render_subject_report(
    out_html: PathLike,
    *,
    subject: Mapping[str, Any],
    model: Mapping[str, Any],
    figures: Mapping[str, PathLike | tuple[PathLike, str]],
    top_regions: pd.DataFrame | None,
    qc: Mapping[str, Any],
    global_metabolism: Mapping[str, Any] | None = None,
    crs: Mapping[str, Any] | None = None,
) -> Path:
    """Write one subject's self-contained HTML report.

    Parameters
    ----------
    out_html : path
        Report file, e.g. ``sub-01/sub-01_report.html``; written atomically.
    subject : mapping
        Subject information shown as a table, e.g. ``participant_id``, ``group``,
        ``age``, ``sex``, ``crs``. ``participant_id`` (or ``label``) is the title.
    model : mapping
        Normative model information (method, modalities, resolution, folder...).
    figures : mapping
        Figure title -> PNG/JPEG path, or -> ``(path, caption)``. Embedded in order.
    top_regions : pandas.DataFrame or None
        Region table already sorted from most to least abnormal; the first ten rows
        are shown with all their columns.
    qc : mapping
        Quality checks shown as a table (brain coverage, normalisation reference value,
        ``modalities_present``, ``modalities_missing``...). Missing modalities are
        flagged.
    global_metabolism : mapping, optional
        ``percent`` (or ``global_cortical_pet_percent``): cortical metabolism in percent
        of the normative mean; ``reference`` (or ``pet_reference``): the reference
        region; other keys are listed. None when there is no PET.
    crs : mapping, optional
        ``crs_pred`` (or ``pred``), optional ``crs_lower``/``crs_upper`` (or
        ``lower``/``upper``) and ``interval_level`` (0-1 or percent); other keys are
        listed. None when no CRS-R model was given.

    Returns
    -------
    pathlib.Path
        ``out_html``.

    Raises
    ------
    AnomalyInputError
        A figure file that is missing, not PNG/JPEG, or corrupt; a non-numeric
        percentage or prediction.

    Notes
    -----
    All text is escaped with :func:`html.escape`; the page has no script, no external
    resource and no web font, so it renders identically offline.
    """
    title, body = _subject_page(subject, model, figures, top_regions, qc, global_metabolism, crs)
    return _write_page(out_html, title, body)


def _subject_page(subject: Mapping[str, Any], model: Mapping[str, Any],
                  figures: Mapping[str, PathLike | tuple[PathLike, str]], top_regions: pd.DataFrame | None,
                  qc: Mapping[str, Any], global_metabolism: Mapping[str, Any] | None,
                  crs: Mapping[str, Any] | None) -> tuple[str, list[str]]:
    """Title and body parts of a subject report (arguments as for the report)."""
    _, ident = _first(subject, "participant_id", "label", "subject")
    title = f"Anomaly report: {_fmt(ident) if ident is not None else 'subject'}"
    figure_html = "".join(_figure_html(str(name), spec) for name, spec in figures.items())
    return title, [
        _header(title, "Where this brain differs from a normative model of healthy brains, and "
                       "which regions differ most. For research use: the maps and numbers are not "
                       "a diagnosis."),
        *_subject_sections(subject, model, figure_html, top_regions, qc, global_metabolism, crs),
        _footer(),
    ]


def _subject_sections(subject: Mapping[str, Any], model: Mapping[str, Any], figure_html: str,
                      top_regions: pd.DataFrame | None, qc: Mapping[str, Any],
                      global_metabolism: Mapping[str, Any] | None, crs: Mapping[str, Any] | None
                      ) -> list[str]:
    """The sections of a subject report, in page order (arguments as for the report)."""
    return [
        _qc_banner(qc),
        "<div class=\"grid\">",
        _section("subject", "Subject", _kv_table(subject)),
        _section("model", "Model", _kv_table(model)),
        "</div>",
        "<div class=\"grid\">", _metabolism_html(global_metabolism), _crs_html(crs), "</div>",
        _section("figures", "Figures", figure_html or "<p class=\"muted\">No figures.</p>"),
        _regions_html(top_regions),
        _qc_html(qc),
    ]


def render_index(
    out_html: PathLike,
    entries: list[Mapping[str, Any]],
    *,
    title: str,
    summary: Mapping[str, Any] | None = None,
) -> Path:
    """Write an index page with one table row per subject, linking their reports.

    Parameters
    ----------
    out_html : path
        Index file, e.g. ``OUT_DIR/index.html``.
    entries : list of mappings
        One per subject. The key ``report`` (path of the subject's report; a relative
        path is relative to the folder of ``out_html``) becomes a relative link; every
        other key becomes a column, in order of first appearance.
    title : str
        Page title.
    summary : mapping, optional
        Cohort-level values shown above the table (number of subjects, model...).

    Returns
    -------
    pathlib.Path
        ``out_html``.
    """
    base = Path(out_html).resolve().parent
    columns: list[str] = []
    for entry in entries:
        columns += [key for key in entry if key != "report" and key not in columns]
    rows = [_index_row(entry, columns, base) for entry in entries]
    if not rows:
        rows.append(f"<tr><td colspan=\"{len(columns) + 1}\" class=\"muted\">No subjects.</td></tr>")
    body = [_header(title, RESEARCH_ONLY)]
    if summary:
        body.append(_section("summary", "Summary", _kv_table(summary)))
    body += [_section("subjects", "Subjects", _table([*columns, "report"], rows)), _footer()]
    return _write_page(out_html, title, body)


def _index_row(entry: Mapping[str, Any], columns: Sequence[str], base: Path) -> str:
    """One subject's ``<tr>`` of the index: its values, then the link to its report."""
    cells = [_cell(entry.get(col)) for col in columns]
    report = entry.get("report")
    if report is None or _is_missing(report):
        cells.append("<td class=\"muted\">none</td>")
    else:
        cells.append(f"<td><a href=\"{_href(report, base)}\">open</a></td>")
    return "<tr>" + "".join(cells) + "</tr>"


def render_demo_index(
    out_html: PathLike,
    *,
    cohort: str,
    headline: Mapping[str, Any],
    outputs: Sequence[tuple[PathLike, str]],
    figures: Sequence[PathLike] = (),
    commands: Sequence[tuple[str, float]] = (),
) -> Path:
    """Write the page of ``anomaly demo``: headline numbers and links to every output.

    Parameters
    ----------
    out_html : path
        Page file, ``DEMO_DIR/index.html``.
    cohort : str
        What was simulated, e.g. "16 controls, 16 patients, 4 mm"; shown in the intro.
    headline : mapping
        Label -> value of the headline numbers (values shown as given: pass strings
        to choose their format).
    outputs : sequence of (path, text)
        Output files to link; a relative path is relative to the folder of ``out_html``.
    figures : sequence of path
        PNG/JPEG figures (the group maps), embedded with their file stem as title.
    commands : sequence of (command, seconds)
        The commands that the demo ran, shown as a transcript.

    Returns
    -------
    pathlib.Path
        ``out_html``.
    """
    base = Path(out_html).resolve().parent
    links = "".join(f"<li><a href=\"{_href(path, base)}\">{html.escape(text)}</a></li>"
                    for path, text in outputs)
    body = [
        _header("anomaly demo", "A simulated cohort of controls and coma patients, the normative "
                                "autoencoder, anomaly maps, the CRS-R regressor and group analysis "
                                f"({cohort}). {RESEARCH_ONLY}"),
        _section("headline", "Headline numbers", _kv_table(headline, label=_escape_key)),
        _section("outputs", "Outputs", f"<ul>{links}</ul>"),
    ]
    if figures:
        body.append(_section("group", "Group maps",
                             "".join(_figure_html(Path(png).stem, png) for png in figures)))
    transcript = "".join(f"$ {command}    # {seconds:.0f} s\n" for command, seconds in commands)
    body += [_section("commands", "Commands run", f"<pre>{html.escape(transcript)}</pre>"), _footer()]
    return _write_page(out_html, "anomaly demo", body)


#: Row colours of the QC page by decision.
_DECISION_STYLE = {"pass": "background:#eef6ee", "warn": "background:#fff4e5", "refuse": "background:#fde8e8"}


def render_qc_page(out_html: PathLike, rows: Sequence[Mapping[str, Any]], *, title: str,
                   summary: Mapping[str, Any] | None = None) -> Path:
    """Write the cohort QC page: one row per subject and image, coloured by decision.

    Parameters
    ----------
    out_html : path
        Page file, e.g. ``QC_DIR/qc.html``; written atomically.
    rows : sequence of mappings
        One per subject and image (the rows of ``qc.tsv``); the key ``decision``
        ("pass", "warn" or "refuse") colours the row; every key becomes a column.
    title : str
        Page title.
    summary : mapping, optional
        Cohort-level values shown above the table (counts per decision, model...).

    Returns
    -------
    pathlib.Path
        ``out_html``.
    """
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = [f"<tr class=\"{_e(row.get('decision'))}\" style=\"{_DECISION_STYLE.get(row.get('decision'), '')}\">"
             + "".join(_cell(row.get(col)) for col in columns) + "</tr>" for row in rows]
    if not lines:
        lines.append(f"<tr><td colspan=\"{max(len(columns), 1)}\" class=\"muted\">No images.</td></tr>")
    body = [_header(title, "Each image's quality numbers against the normative model's training controls: "
                           "pass, warn (scored with a warning) or refuse (anomaly score exits with status 2 "
                           "unless --force). See the README section 'Quality control'.")]
    if summary:
        body.append(_section("summary", "Summary", _kv_table(summary)))
    body += [_section("images", "Images", _table(columns, lines)), _footer()]
    return _write_page(out_html, title, body)
