"""Stage 0 of the pipeline: everything read from or written for a user.

Reading goes through one gate (:func:`load_image`, :func:`find_subjects`), so that
every problem is reported once, in the same way: an :class:`AnomalyInputError` whose
message is a single line naming the file (or parameter) and the problem. The command
line prints that line and exits with status 2. Writing goes through
:func:`atomic_path`, so that an interrupted run never leaves a half-written file.

This is the lowest layer of the package: it imports only :mod:`anomaly.constants`.
"""

from anomaly.io.bids import (
                                Subject,
                                find_subjects,
                                modality_from_path,
                                read_participants,
                                subject_from_path,
)
from anomaly.io.errors import AnomalyInputError, AnomalyModelError
from anomaly.io.images import load_image, read_map
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
    "Subject",
    "atomic_path",
    "check_output_dir",
    "find_subjects",
    "jsonable",
    "load_image",
    "read_map",
    "modality_from_path",
    "read_participants",
    "save_image",
    "subject_from_path",
    "write_bytes",
    "write_json",
    "write_text",
    "write_tsv",
]
