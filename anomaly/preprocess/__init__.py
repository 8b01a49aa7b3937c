"""Stage 1 of the pipeline: put images on the model grid.

Reorient, resample, brain mask and intensity normalisation. The model grid is the
MNI152 (2009, nilearn) space at a chosen resolution, cropped to the brain and padded so
that the network can halve it three times. MRI is normalised by a robust z-score inside
the brain (median and interquartile range), PET as SUVR (ratio to the mean uptake of a
reference region), so that images from different scanners are comparable.
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
