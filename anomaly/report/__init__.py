"""Stage 5 of the pipeline: every figure and HTML page the toolkit shows.

:mod:`anomaly.report.figures` draws glass brains, slices, bar charts and loss curves
(nilearn and matplotlib); :mod:`anomaly.report.html` renders self-contained HTML pages
(per-subject reports, indexes). Both take plain arrays, images, tables and numbers, so
that any stage's results can be shown.
"""

from anomaly.report.figures import (GlassBrainRenderer, plot_anomaly_glass_brain, plot_loss_curve, plot_peak_slices,
                                    plot_region_bars, plot_signed_glass_brain)
from anomaly.report.html import render_index, render_subject_report

__all__ = ["GlassBrainRenderer", "plot_anomaly_glass_brain", "plot_loss_curve", "plot_peak_slices",
           "plot_region_bars", "plot_signed_glass_brain", "render_index", "render_subject_report"]
