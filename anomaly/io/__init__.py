"""Stage 1 of the pipeline: everything read from or written for a user.

Modules, one job each:

- :mod:`~anomaly.io.errors`: :class:`AnomalyInputError` (and :class:`AnomalyModelError`),
  whose message is a single line naming the file (or parameter) and the problem; the
  command line prints that line and exits with status 2;
- :mod:`~anomaly.io.images`: the one image gate, :func:`load_image` for scans and
  :func:`read_map` for derived maps (statistical maps, masks, label images);
- :mod:`~anomaly.io.participants`: :func:`read_participants` for ``participants.tsv``;
- :mod:`~anomaly.io.bids`: BIDS file names and :func:`find_subjects`;
- :mod:`~anomaly.io.tables`: :func:`read_table` for small tab-separated tables (label
  tables, region tables, training logs);
- :mod:`~anomaly.io.writing`: :func:`atomic_path` and the writers built on it, so that
  an interrupted run never leaves a half-written file, and :func:`check_output_dir`;
- :mod:`~anomaly.io.modelfolder`: the one model-folder format (metadata schema,
  SHA-256s, safetensors) of both models, :func:`save_model_folder` and
  :func:`read_model_folder`;
- :mod:`~anomaly.io.device`: :func:`resolve_device`, ``auto|cpu|cuda`` to a torch device.

This is the lowest layer of the package: it imports only :mod:`anomaly.constants` and
the package version.
"""

from anomaly.io.bids import Subject, find_subjects, modality_from_path, subject_from_path
from anomaly.io.device import resolve_device
from anomaly.io.errors import AnomalyInputError, AnomalyModelError
from anomaly.io.images import load_image, read_map
from anomaly.io.modelfolder import ModelFolder, read_model_folder, save_model_folder, save_tensors, sha256
from anomaly.io.participants import read_participants
from anomaly.io.tables import check_columns, read_table
from anomaly.io.writing import (
    atomic_path,
    check_output_dir,
    jsonable,
    save_image,
    write_bytes,
    write_json,
    write_text,
    write_tsv,
)

__all__ = [
    "AnomalyInputError",
    "AnomalyModelError",
    "ModelFolder",
    "Subject",
    "atomic_path",
    "check_columns",
    "check_output_dir",
    "find_subjects",
    "jsonable",
    "load_image",
    "modality_from_path",
    "read_map",
    "read_model_folder",
    "read_participants",
    "read_table",
    "resolve_device",
    "save_image",
    "save_model_folder",
    "save_tensors",
    "sha256",
    "subject_from_path",
    "write_bytes",
    "write_json",
    "write_text",
    "write_tsv",
]
