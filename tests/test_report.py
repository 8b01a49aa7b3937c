"""Tests for anomaly.report: self-contained, escaped HTML that a real browser renders."""

from __future__ import annotations

import html.parser
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anomaly.io import AnomalyInputError
from anomaly.report.html import render_index, render_subject_report

MAGENTA = (255, 0, 255)
EVIL = "sub-01<script>alert('x')</script>"


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class TagCollector(html.parser.HTMLParser):
    """Every start tag with its attributes, and the visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> TagCollector:
    parser = TagCollector()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture
def figure_png(tmp_path) -> Path:
    """A solid magenta PNG: easy to find again in a browser screenshot."""
    path = tmp_path / "figs" / "magenta.png"
    path.parent.mkdir()
    Image.new("RGB", (320, 160), MAGENTA).save(path)
    return path


@pytest.fixture
def regions() -> pd.DataFrame:
    names = ["<b>Brain_Stem</b>"] + [f"Region_{i}" for i in range(13)]
    return pd.DataFrame(
        {
            "index": np.arange(1, 15),
            "name": names,
            "n_voxels": np.arange(100, 114),
            "anomaly_mean": np.linspace(3, 0.1, 14),
            "pet_z_mean": np.r_[np.nan, -np.linspace(2, 0, 13)],
        }
    )


@pytest.fixture
def report_kwargs(figure_png, regions) -> dict:
    return {
        "subject": {"participant_id": EVIL, "group": "patient", "age": 41.0, "sex": "F"},
        "model": {"method": "zscore", "modalities": ["T1w", "pet"], "resolution": 2.0},
        "figures": {"Magenta test figure": (figure_png, "A caption & more <i>text</i>")},
        "top_regions": regions,
        "qc": {
            "brain_coverage": 0.97,
            "pet_reference_value": 1234.5,
            "modalities_present": ["T1w"],
            "modalities_missing": ["pet"],
        },
        "global_metabolism": {"percent": 38.0, "reference": "cerebellum"},
        "crs": {"crs_pred": 8.34, "crs_lower": 5.1, "crs_upper": 11.5, "interval_level": 0.8},
    }


@pytest.fixture
def report(tmp_path, report_kwargs) -> Path:
    return render_subject_report(tmp_path / "sub-01" / "sub-01_report.html", **report_kwargs)


# ---------------------------------------------------------------- static checks
def test_report_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text)  # no URL at all, not even in CSS
    parsed = parse(report)
    names = [tag for tag, _ in parsed.tags]
    for forbidden in ("script", "link", "iframe", "object", "embed"):
        assert forbidden not in names
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) == 1
    assert all(a["src"].startswith("data:image/png;base64,") for a in images)
    assert images[0]["width"] == "320" and images[0]["height"] == "160"
    # No leftover temporary file from the atomic write.
    assert sorted(p.name for p in report.parent.iterdir()) == ["sub-01_report.html"]


def test_report_escapes_text(report):
    text = report.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert "&lt;script&gt;" in text
    assert "&lt;b&gt;Brain_Stem&lt;/b&gt;" in text
    assert "A caption &amp; more &lt;i&gt;text&lt;/i&gt;" in text
    assert EVIL in "".join(parse(report).text)  # shown to the reader as typed


def test_report_sections_and_values(report):
    text = " ".join("".join(parse(report).text).split())
    assert "38% of the normative mean cortical metabolism (reference region: cerebellum)" in text
    assert "Below the ~42% level associated with awareness" in text
    assert "Stender" in text and "not a diagnosis" in text
    assert "8.3 / 23 (predicted CRS-R total); 80% interval 5.1 to 11.5" in text
    assert "Missing modalities: pet" in text
    assert "The 10 most abnormal of 14 atlas regions" in text
    assert "Region_8" in text and "Region_9" not in text  # ten rows only
    assert "n/a" in text  # NaN rendered readably


def test_report_qc_keys_with_spaces_and_no_missing(tmp_path, report_kwargs):
    report_kwargs["qc"] = {"modalities present": "T1w, pet", "modalities missing": "none"}
    text = render_subject_report(tmp_path / "r.html", **report_kwargs).read_text()
    assert "Missing modalities" not in text and "modalities missing" in text


def test_report_without_pet_and_crs(tmp_path, report_kwargs):
    report_kwargs.update(global_metabolism=None, crs=None, figures={}, top_regions=None)
    out = render_subject_report(tmp_path / "r.html", **report_kwargs)
    text = " ".join("".join(parse(out).text).split())
    assert "No PET image" in text
    assert "No CRS-R model given" in text
    assert "No figures." in text


def test_report_metabolism_above_level(tmp_path, report_kwargs):
    report_kwargs["global_metabolism"] = {"global_cortical_pet_percent": 61.0, "pet_reference": "brainstem"}
    text = render_subject_report(tmp_path / "r.html", **report_kwargs).read_text()
    assert "61%" in text and "At or above the ~42% level" in text
    assert "below the" not in text.lower().replace("below the ~42", "")


def test_report_figure_errors(tmp_path, report_kwargs):
    out = tmp_path / "r.html"
    report_kwargs["figures"] = {"gone": tmp_path / "missing.png"}
    with pytest.raises(AnomalyInputError, match="missing.png: report figure not found"):
        render_subject_report(out, **report_kwargs)
    bad = tmp_path / "fake.png"
    bad.write_bytes(b"not a png")
    report_kwargs["figures"] = {"fake": bad}
    with pytest.raises(AnomalyInputError, match="not a valid PNG"):
        render_subject_report(out, **report_kwargs)
    report_kwargs["figures"] = {"svg": tmp_path / "f.svg"}
    with pytest.raises(AnomalyInputError, match="PNG or JPEG"):
        render_subject_report(out, **report_kwargs)
    assert not out.exists()  # nothing half-written


def test_index_links_reports_relatively(tmp_path, report):
    entries = [
        {"participant_id": "sub-01", "crs_pred": 8.34, "report": report},
        {"participant_id": "sub-<02>", "crs_pred": float("nan"), "report": None},
        {"participant_id": "sub-03", "report": "sub-03/sub-03 report.html"},  # relative
    ]
    out = render_index(tmp_path / "index.html", entries, title="Cohort <A>", summary={"n_subjects": 2})
    parsed = parse(out)
    links = [attrs["href"] for tag, attrs in parsed.tags if tag == "a"]
    assert links == ["sub-01/sub-01_report.html", "sub-03/sub-03%20report.html"]
    assert (out.parent / links[0]).is_file()
    text = out.read_text()
    assert "sub-&lt;02&gt;" in text and "Cohort &lt;A&gt;" in text
    assert not re.search(r"https?://", text)
    headers = [d for d in parsed.text if d in ("participant id", "crs pred", "report")]
    assert headers == ["participant id", "crs pred", "report"]


# ---------------------------------------------------------------- real browser
CHROMIUM = find_chromium()
needs_browser = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary on PATH (apt-get install chromium): browser rendering not tested",
)


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # needed as root in containers
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@needs_browser
def test_browser_screenshot_shows_embedded_figure(tmp_path, report):
    shot = tmp_path / "shot.png"
    result = run_chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri()
    )
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as png:
        pixels = np.asarray(png.convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 10  # not a blank page
    magenta = (pixels[..., 0] > 240) & (pixels[..., 1] < 20) & (pixels[..., 2] > 240)
    # The 320 x 160 figure is decoded and drawn at its natural size.
    assert magenta.sum() >= 0.95 * 320 * 160
    rows, cols = np.nonzero(magenta)
    assert cols.max() - cols.min() + 1 == 320 and rows.max() - rows.min() + 1 == 160


@needs_browser
def test_browser_dom_has_escaped_text_and_no_script(tmp_path, report):
    result = run_chromium(tmp_path, "--virtual-time-budget=2000", "--dump-dom", report.as_uri())
    dom = result.stdout
    assert "<h1>Anomaly report:" in dom, result.stderr[-2000:]
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in dom
    assert "<script" not in dom.lower()
    assert dom.count("<img ") == 1 and 'src="data:image/png;base64,' in dom
    for section in ("subject", "model", "metabolism", "crs", "figures", "regions", "qc"):
        assert f'id="{section}"' in dom


def test_demo_index_links_outputs_and_shows_headline_numbers(tmp_path, figure_png):
    from anomaly.report.html import render_demo_index

    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "index.html").write_text("<html></html>")
    out = render_demo_index(
        tmp_path / "index.html", cohort="16 controls, 16 patients, 4 mm",
        headline={"CRS-R mil_x mae (kfold:4 CV)": "3.21 [2.50, 4.00]", "Total run time": "12 s"},
        outputs=[(tmp_path / "scores" / "index.html", "Per-patient <reports>")],
        figures=[figure_png], commands=[("anomaly simulate 'a b' <x>", 12.4)])
    parsed = parse(out)
    assert [a["href"] for tag, a in parsed.tags if tag == "a"] == ["scores/index.html"]
    assert [tag for tag, _ in parsed.tags].count("img") == 1
    text = " ".join("".join(parsed.text).split())
    assert "(16 controls, 16 patients, 4 mm)" in text
    assert "CRS-R mil_x mae (kfold:4 CV)3.21 [2.50, 4.00]" in text  # labels kept as given
    assert "Per-patient <reports>" in text and "$ anomaly simulate 'a b' <x> # 12 s" in text
    assert "<script" not in out.read_text().lower() and not re.search(r"https?://", out.read_text())
