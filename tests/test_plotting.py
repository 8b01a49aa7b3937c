"""Tests for anomaly.report.figures: valid PNGs, symmetric signed maps, no figure leaks."""

from __future__ import annotations

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text
from PIL import Image

import anomaly.report.figures as plotting
from anomaly.io import AnomalyInputError

SHAPE = (20, 24, 19)  # coarse, non-cubic grid covering the MNI152 box: fast to draw


def mni_affine(shape):
    size = np.array([180.0, 217.0, 181.0]) / np.array(shape)
    affine = np.diag(list(size) + [1.0])
    affine[:3, 3] = np.array([-90.0, -126.0, -72.0]) + size / 2
    return affine


@pytest.fixture
def z_img(rng):
    """Signed map: noise, a +3 blob and a -7 voxel (the peak by magnitude)."""
    data = rng.normal(0, 0.5, SHAPE).astype(np.float32)
    data[5:8, 10:13, 8:11] = 3.0
    data[14, 12, 9] = -7.0
    data[0, 0, 0] = np.nan  # derived maps may hold NaN
    return nib.Nifti1Image(data, mni_affine(SHAPE))


@pytest.fixture
def anomaly_img(z_img):
    data = np.clip(np.nan_to_num(z_img.get_fdata()), 0, None).astype(np.float32)
    return nib.Nifti1Image(data, z_img.affine)


@pytest.fixture
def captured(monkeypatch):
    """Record each figure's axes limits and texts just before it is saved."""
    seen = []
    original = plotting._save

    def spy(fig, out_png, dpi):
        fig.canvas.draw()  # lay out texts so that they can be read back
        seen.append(
            {
                "ylims": [ax.get_ylim() for ax in fig.axes],
                "texts": [t.get_text() for t in fig.findobj(Text)],
                "n_bars": sum(len(c) for ax in fig.axes for c in ax.containers),
            }
        )
        return original(fig, out_png, dpi)

    monkeypatch.setattr(plotting, "_save", spy)
    return seen


def assert_png(path, min_width=200):
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as png:
        png.verify()
    with Image.open(path) as png:
        assert png.width >= min_width and png.height >= 100
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.std() > 5  # not blank
    # Atomic write: no temporary file left next to the result.
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    assert plt.get_fignums() == []  # nothing left open in pyplot


def test_anomaly_glass_brain(tmp_path, anomaly_img):
    out = plotting.plot_anomaly_glass_brain(anomaly_img, tmp_path / "a" / "glass.png", title="x")
    assert out == tmp_path / "a" / "glass.png"
    assert_png(out)
    with Image.open(out) as png:
        rgb = np.asarray(png.convert("RGB")).reshape(-1, 3).astype(int)
    # The "hot" blob: saturated red/yellow pixels on the black background.
    assert np.sum((rgb[:, 0] > 200) & (rgb[:, 2] < 80)) > 50


def test_anomaly_glass_brain_accepts_path_and_empty_map(tmp_path, anomaly_img, recwarn):
    path = tmp_path / "anomaly.nii.gz"
    nib.Nifti1Image(np.zeros(SHAPE, np.float32), anomaly_img.affine).to_filename(path)
    assert_png(plotting.plot_anomaly_glass_brain(path, tmp_path / "empty.png", threshold=2.0))
    assert not [w for w in recwarn if "empty mask" in str(w.message)]


def test_anomaly_glass_brain_refuses_signed_maps(tmp_path, z_img, anomaly_img):
    with pytest.raises(AnomalyInputError, match="negative values.*plot_signed_glass_brain"):
        plotting.plot_anomaly_glass_brain(z_img, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
    with pytest.raises(AnomalyInputError, match="threshold"):
        plotting.plot_anomaly_glass_brain(anomaly_img, tmp_path / "b.png", threshold="high")


def test_signed_glass_brain_has_symmetric_colorbar(tmp_path, z_img, captured):
    out = plotting.plot_signed_glass_brain(z_img, tmp_path / "z.png", threshold=2.0)
    assert_png(out)
    # The colour bar axis spans [-max|z|, +max|z|] although max(z) is only ~3.
    assert any(np.allclose(lim, (-7.0, 7.0)) for lim in captured[0]["ylims"])
    plotting.plot_signed_glass_brain(z_img, tmp_path / "z5.png", vmax=5.0)
    assert any(np.allclose(lim, (-5.0, 5.0)) for lim in captured[1]["ylims"])


def test_peak_slices_cut_at_the_peak(tmp_path, z_img, captured):
    out = plotting.plot_peak_slices(z_img, None, tmp_path / "peak.png", title="T1w z")
    assert_png(out)
    x, y, z = nib.affines.apply_affine(z_img.affine, (14, 12, 9))
    expected = f"T1w z: peak -7.00 at ({x:.0f}, {y:.0f}, {z:.0f}) mm"
    assert expected in captured[0]["texts"]


def test_peak_slices_with_background(tmp_path, anomaly_img, rng):
    background = nib.Nifti1Image(rng.random(SHAPE).astype(np.float32), anomaly_img.affine)
    assert_png(plotting.plot_peak_slices(anomaly_img, background, tmp_path / "p.png"))


def test_region_bars(tmp_path, captured):
    table = pd.DataFrame(
        {"name": [f"region_{i}" for i in range(15)], "z": np.linspace(-3, 2, 15)}
    )
    table.loc[3, "z"] = np.nan
    out = plotting.plot_region_bars(table, "z", tmp_path / "bars.png", top=5, title="t")
    assert_png(out)
    assert captured[0]["n_bars"] == 5
    assert "region_0" in captured[0]["texts"]  # |-3| is the largest
    with pytest.raises(AnomalyInputError, match="no column 'zz'"):
        plotting.plot_region_bars(table, "zz", tmp_path / "x.png")


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_loss_curve_from_file(tmp_path, suffix):
    log = pd.DataFrame(
        {
            "epoch": np.arange(1, 21),
            "train_loss": np.exp(-np.arange(20) / 3.0),
            "val_loss": np.exp(-np.arange(20) / 4.0) + 0.01,
        }
    )
    path = tmp_path / f"log{suffix}"
    log.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    assert_png(plotting.plot_loss_curve(path, tmp_path / "loss.png"))


def test_loss_curve_without_validation_and_errors(tmp_path):
    log = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.4]})
    assert_png(plotting.plot_loss_curve(log, tmp_path / "loss.png", title="fit"))
    with pytest.raises(AnomalyInputError, match="lacks column.*train_loss"):
        plotting.plot_loss_curve(log.rename(columns={"train_loss": "loss"}), tmp_path / "x.png")
    with pytest.raises(AnomalyInputError, match="cannot read"):
        plotting.plot_loss_curve(tmp_path / "missing.csv", tmp_path / "x.png")


def test_unreadable_map_is_an_input_error(tmp_path):
    with pytest.raises(AnomalyInputError, match="z_img"):
        plotting.plot_signed_glass_brain(tmp_path / "nope.nii.gz", tmp_path / "x.png")


def test_peak_slices_of_an_empty_map(tmp_path, anomaly_img, captured):
    empty = nib.Nifti1Image(np.zeros(SHAPE, np.float32), anomaly_img.affine)
    assert_png(plotting.plot_peak_slices(empty, None, tmp_path / "e.png"))
    assert "empty map" in captured[0]["texts"]


def test_docstrings_have_the_shared_parameter_docs():
    """fill_doc replaced every %(name)s placeholder, indented like the rest."""
    from anomaly.report._docs import DOCDICT, fill_doc

    for name in plotting.__all__:
        doc = getattr(plotting, name).__doc__
        assert "%(" not in doc, name
    assert "\n    out_png : path\n        PNG file to write" in plotting.plot_loss_curve.__doc__

    def documented():
        """Nothing.

        Parameters
        ----------
        %(dpi)s
        """

    assert fill_doc(documented).__doc__.endswith(
        "        " + DOCDICT["dpi"].replace("\n", "\n        ") + "\n        ")

    def typo():
        """%(no_such_parameter)s"""

    with pytest.raises(KeyError):
        fill_doc(typo)
