"""Stage 2 of the pipeline: put a subject's images on the model grid.

Modules, one job each:

- :mod:`~anomaly.preprocess.grid`: the model grid (the MNI152 2009 space of nilearn at a
  chosen resolution, cropped to the brain and padded so that a network can halve it
  three times), its templates, and the two resampling paths;
- :mod:`~anomaly.preprocess.normalise`: intensity normalisation, MRI by a robust z-score
  inside the brain (median and interquartile range), PET as SUVR (ratio to the mean
  uptake of a reference region), so that images from different scanners are comparable;
- :mod:`~anomaly.preprocess.subject`: :func:`preprocess_subject`, which reads (through
  :func:`anomaly.io.load_image`), resamples and normalises one subject's images.

Resampling has two paths, and no other module of the package should resample:
:func:`resample_to_grid` (scipy; scans and masks onto a :class:`Grid`, array out) and
:func:`resample_image` (nilearn; label images and derived maps onto any grid, image out).
"""

from anomaly.preprocess.grid import (
    Grid,
    make_grid,
    resample_image,
    resample_to_grid,
    template_images,
)
from anomaly.preprocess.normalise import normalise_mri, normalise_pet
from anomaly.preprocess.subject import (
    PET_MODALITY,
    PET_REFERENCES,
    Preprocessed,
    preprocess_subject,
)

__all__ = [
    "Grid",
    "PET_MODALITY",
    "PET_REFERENCES",
    "Preprocessed",
    "make_grid",
    "normalise_mri",
    "normalise_pet",
    "preprocess_subject",
    "resample_image",
    "resample_to_grid",
    "template_images",
]
