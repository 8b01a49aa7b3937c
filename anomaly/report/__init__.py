"""Stage 7 of the pipeline: every figure and HTML page the toolkit shows.

:mod:`anomaly.report.figures` draws glass brains, slices, bar charts and loss curves
(nilearn and matplotlib); :mod:`anomaly.report.html` renders self-contained HTML pages
(per-subject reports, the index of a scoring folder, the demo's page);
:mod:`anomaly.report.subject` composes a scored subject's figures and report. They take
plain arrays, images, tables and numbers (or duck-typed scored maps), so that any
stage's results can be shown.
"""

from anomaly.report.figures import (GlassBrainRenderer, plot_anomaly_glass_brain, plot_loss_curve, plot_peak_slices,
                                    plot_region_bars, plot_signed_glass_brain)
from anomaly.report.html import render_demo_index, render_index, render_subject_report
from anomaly.report.subject import write_subject_figures

__all__ = ["GlassBrainRenderer", "plot_anomaly_glass_brain", "plot_loss_curve", "plot_peak_slices",
           "plot_region_bars", "plot_signed_glass_brain", "render_demo_index", "render_index",
           "render_subject_report", "write_subject_figures"]
