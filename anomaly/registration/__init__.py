"""Stage 3 (beside atlas): native-space images to MNI152 space, for ``anomaly prepare``.

Modules, one job each:

- :mod:`~anomaly.registration.template`: the target (nilearn's MNI152 2009 T1 template
  and brain mask on the model grid; nothing downloaded);
- :mod:`~anomaly.registration.register`: ANTs registrations (T1w to template: rigid,
  affine, SyN; other volumes rigidly to the T1w by mutual information) and resampling;
- :mod:`~anomaly.registration.qc`: the per-subject QC figure;
- :mod:`~anomaly.registration.subject`: one subject, files and QC record;
- :mod:`~anomaly.registration.dataset`: a dataset (resumable, jobs, shards);
- :mod:`~anomaly.registration.native_maps`: MNI-space maps back to a subject's T1w.

It imports only :mod:`anomaly.io`, :mod:`anomaly.preprocess` and
:mod:`anomaly.constants`; ANTsPy is imported inside the functions that use it.
"""

from anomaly.registration.dataset import prepare_dataset
from anomaly.registration.register import MODES
from anomaly.registration.subject import (
           QC_SUFFIX,
           is_prepared,
           prepare_subject,
           registration_figure,
           transform_paths,
)
from anomaly.registration.template import SPACE

__all__ = ["MODES", "QC_SUFFIX", "SPACE", "is_prepared", "prepare_dataset", "prepare_subject",
           "registration_figure", "transform_paths"]
