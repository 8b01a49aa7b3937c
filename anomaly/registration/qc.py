"""The registration QC figure: edges of the template drawn over the warped T1w."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from anomaly.io import atomic_path

__all__ = ["plot_registration"]


def plot_registration(warped: nib.Nifti1Image, template: nib.Nifti1Image, path: Path, *,
                      title: str = "") -> Path:
    """Three orthogonal slices of the warped T1w with the template's edges in red.

    Parameters
    ----------
    warped : nibabel image
        The subject's T1w on the template grid.
    template : nibabel image
        The T1 template on the same grid.
    path : pathlib.Path
        PNG file to write (atomically; parents created).
    title : str, optional
        Figure title.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from scipy import ndimage

    image = np.asarray(warped.dataobj, dtype=np.float32)
    reference = np.asarray(template.dataobj, dtype=np.float32)
    # Edges: gradient magnitude of the template, top fifth inside the head.
    edges = ndimage.generic_gradient_magnitude(ndimage.gaussian_filter(reference, 0.7), ndimage.sobel)
    threshold = np.percentile(edges[reference > 0.05], 80) if (reference > 0.05).any() else edges.max()
    centre = [s // 2 for s in image.shape]
    views = [(image[centre[0]], edges[centre[0]]), (image[:, centre[1]], edges[:, centre[1]]),
             (image[:, :, centre[2]], edges[:, :, centre[2]])]
    vmax = float(np.percentile(image[image > 0], 99)) if (image > 0).any() else 1.0
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, (slab, edge) in zip(axes, views, strict=True):
        ax.imshow(slab.T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
        ax.contour((edge > threshold).T.astype(float), levels=[0.5], colors="red", linewidths=0.6)
        ax.axis("off")
    fig.suptitle(title or "registration QC", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
