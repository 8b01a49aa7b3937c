"""The one model-folder format of the toolkit (normative and CRS-R models).

A saved model is a folder::

    MODEL_DIR/metadata.json         the schema below + the model's own description
    MODEL_DIR/<name>.safetensors    tensors: raw bytes and a JSON header, nothing executable

``metadata.json`` starts with the same keys for every kind of model:

``format``          ``"anomaly-model"``
``kind``            ``"normative"`` or ``"crs"``
``format_version``  :data:`FORMAT_VERSION` (an integer, bumped on incompatible changes)
``toolkit``         ``"anomaly"``; ``toolkit_version`` the version that wrote it
``created``         UTC time, Python and library versions
``files``           ``{file name: SHA-256}`` of every data file of the folder

followed by what the model itself records (settings, grid, history...). Saving writes
every file into a hidden staging folder next to the target and then renames it into
place, ``metadata.json`` last, so a folder with a metadata file is a complete model.
Loading checks the schema, the version and the SHA-256 of each file before any file is
parsed, and reads tensors with safetensors (never unpickling): a tampered, truncated or
foreign file is refused with a one-line :class:`AnomalyModelError`.

Folders written before this format (anomaly 0.1.0) still load: the normative layout
(``toolkit``, ``format_version`` 1, ``files{}``) and the CRS-R layout
(``format: "anomaly-crs-model"``, ``"1.0"``, ``weights{file, sha256}``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as _dist
from pathlib import Path
from typing import Any

from anomaly import __version__
from anomaly.io.errors import AnomalyModelError
from anomaly.io.writing import write_json

FORMAT = "anomaly-model"
FORMAT_VERSION = 2
METADATA = "metadata.json"
#: Model kinds and how error messages name them.
KINDS = {"normative": "normative", "crs": "CRS-R"}
#: Keys of the common schema; a model's own metadata may not reuse them.
SCHEMA_KEYS = ("format", "kind", "format_version", "toolkit", "toolkit_version", "created", "files")
#: Libraries whose versions are recorded in ``created`` (those installed).
LIBRARIES = ("numpy", "torch", "monai", "safetensors", "scikit-learn")

#: Layouts written by anomaly 0.1.0, still read.
LEGACY_NORMATIVE_VERSION = 1
LEGACY_CRS_FORMAT = "anomaly-crs-model"


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------- saving
def _created() -> dict[str, Any]:
    info = {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python_version": platform.python_version()}
    for name in LIBRARIES:
        try:
            info[f"{name.replace('-', '_')}_version"] = _dist.version(name)
        except _dist.PackageNotFoundError:
            pass
    return info


def save_tensors(tensors: Mapping[str, Any], path: Path, *,
                 header: Mapping[str, str] | None = None) -> None:
    """Write numpy arrays or torch tensors (not mixed) to a safetensors file."""
    if all(hasattr(v, "__array_interface__") for v in tensors.values()):
        import numpy as np
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=header)
    else:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path),
                  metadata=header)


def save_model_folder(folder: str | os.PathLike, kind: str, metadata: Mapping[str, Any],
                      writers: Mapping[str, Callable[[Path], None]]) -> Path:
    """Write a model folder: data files, their SHA-256s, then ``metadata.json``.

    Parameters
    ----------
    folder : path
        The model folder; created, or updated in place (other files are kept).
    kind : {"normative", "crs"}
    metadata : mapping
        The model's own description, stored after the common keys.
    writers : mapping
        File name -> function writing that file at the path it is given.

    Returns
    -------
    Path
        The folder.
    """
    clash = [k for k in SCHEMA_KEYS if k in metadata]
    if kind not in KINDS or clash:
        raise ValueError(f"save_model_folder: bad kind {kind!r} or reserved keys {clash}")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = folder.parent / f".{folder.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    stage.mkdir()
    try:
        for name, write in writers.items():
            write(stage / name)
        schema = {"format": FORMAT, "kind": kind, "format_version": FORMAT_VERSION,
                  "toolkit": "anomaly", "toolkit_version": __version__, "created": _created(),
                  "files": {name: sha256(stage / name) for name in writers}}
        write_json({**schema, **metadata}, stage / METADATA)
        _publish(stage, folder, list(writers))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return folder


def _publish(stage: Path, folder: Path, names: Sequence[str]) -> None:
    """Move the staged files into ``folder``, the metadata last."""
    for path in stage.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())  # the renames must not overtake the data
    if not folder.exists():
        os.replace(stage, folder)  # one atomic rename of the whole folder
        return
    # Withdraw the old model first: a crash midway leaves no model, never a mixed one.
    (folder / METADATA).unlink(missing_ok=True)
    for name in names:
        os.replace(stage / name, folder / name)
    os.replace(stage / METADATA, folder / METADATA)


# ---------------------------------------------------------------------- loading
@dataclass
class ModelFolder:
    """A model folder whose metadata and file hashes have been checked.

    Attributes
    ----------
    path : Path
    kind : str
    metadata : dict
        ``metadata.json`` as written (a legacy folder keeps its own keys).
    files : dict
        File name -> SHA-256, whatever the layout recorded them as.
    """

    path: Path
    kind: str
    metadata: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    def verify(self, names: Sequence[str]) -> None:
        """Check that each file exists and has the SHA-256 the metadata records."""
        for name in names:
            path = self.path / name
            if not path.is_file():
                raise AnomalyModelError(f"{path}: missing from the model folder")
            if self.files.get(name) != sha256(path):
                raise AnomalyModelError(
                    f"{path}: SHA-256 does not match metadata.json; the file is corrupt or was modified")

    def tensors(self, name: str, *, framework: str = "numpy") -> dict[str, Any]:
        """Read a verified safetensors file as numpy arrays or (``"pt"``) torch tensors."""
        if framework == "pt":
            from safetensors.torch import load_file
        else:
            from safetensors.numpy import load_file
        path = self.path / name
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise AnomalyModelError(f"{path}: unreadable ({exc})") from None


def read_model_folder(folder: str | os.PathLike, kind: str, *,
                      required: Sequence[str] = ()) -> ModelFolder:
    """Open a model folder of ``kind``, checking schema, version and SHA-256s.

    Parameters
    ----------
    folder : path
    kind : {"normative", "crs"}
    required : sequence of str
        Data files the model needs, checked with every file the metadata lists (more
        can be checked later with :meth:`ModelFolder.verify`).

    Raises
    ------
    AnomalyModelError
        Not a folder, no or invalid metadata, another kind of model, an unsupported
        format version, a missing file or one whose SHA-256 differs.
    """
    folder = Path(folder)
    meta_path = folder / METADATA
    meta = _read_metadata(folder, meta_path)
    found = ModelFolder(path=folder, kind=kind, metadata=meta, files=_check_schema(meta, kind, meta_path))
    found.verify(list(dict.fromkeys([*required, *found.files])))
    return found


def _read_metadata(folder: Path, meta_path: Path) -> dict[str, Any]:
    if not folder.is_dir():
        if folder.exists():
            raise AnomalyModelError(f"{folder}: is a file; expected a model folder")
        raise AnomalyModelError(f"{folder}: model folder not found (no {METADATA})")
    if not meta_path.is_file():
        raise AnomalyModelError(f"{meta_path}: missing; not an anomaly model folder")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnomalyModelError(f"{meta_path}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(meta, dict):
        raise AnomalyModelError(f"{meta_path}: not valid model metadata (not a JSON object)")
    return meta


def _layout(meta: dict[str, Any]) -> tuple[str | None, Any, dict[str, str]]:
    """(kind, version, files) of the current or a legacy layout."""
    if meta.get("format") == FORMAT:
        files = meta.get("files")
        return meta.get("kind"), meta.get("format_version"), files if isinstance(files, dict) else {}
    if meta.get("format") == LEGACY_CRS_FORMAT:
        version = str(meta.get("format_version", ""))
        weights = meta.get("weights") if isinstance(meta.get("weights"), dict) else {}
        files = {str(weights.get("file", "weights.safetensors")): weights.get("sha256")}
        return "crs", version, files
    if meta.get("toolkit") == "anomaly" and "format" not in meta:
        files = meta.get("files")
        return "normative", meta.get("format_version"), files if isinstance(files, dict) else {}
    return None, None, {}


def _check_schema(meta: dict[str, Any], kind: str, meta_path: Path) -> dict[str, str]:
    found, version, files = _layout(meta)
    if found != kind:
        what = f"a {KINDS[found]} model" if found in KINDS else "no anomaly model"
        raise AnomalyModelError(f"{meta_path}: not an anomaly {KINDS[kind]} model (it describes {what})")
    legacy = meta.get("format") != FORMAT
    supported = (version == LEGACY_NORMATIVE_VERSION if kind == "normative" else
                 str(version).split(".")[0] == "1") if legacy else version == FORMAT_VERSION
    if not supported or isinstance(version, bool):
        raise AnomalyModelError(
            f"{meta_path}: model format version {version!r} is not supported by anomaly "
            f"{__version__} (expects {FORMAT_VERSION}); refit the model with this version")
    return files
