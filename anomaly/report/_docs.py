"""Shared parameter documentation of the figure functions (a "docdict").

Several functions of :mod:`anomaly.report.figures` take the same parameters (``out_png``,
``title``, ``dpi``...). Their numpydoc entries are written once here, and
:func:`fill_doc` substitutes them into a docstring's ``%(name)s`` placeholders, so
that the entries cannot drift apart. Same idea as nilearn's ``nilearn._utils.docs``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

__all__ = ["DOCDICT", "fill_doc"]

T = TypeVar("T", bound=Callable)

# A placeholder alone on its line, with the indentation before it.
_PLACEHOLDER = re.compile(r"^(?P<pad> *)%\((?P<name>\w+)\)s$", re.MULTILINE)

#: Parameter name -> numpydoc entry: the ``name : type`` line, then the description
#: indented by 4 spaces. Written without leading indentation; :func:`fill_doc`
#: indents continuation lines to the placeholder's column.
DOCDICT: dict[str, str] = {
    "out_png": """out_png : path
    PNG file to write (folders are created).""",
    "title": """title : str, optional
    Title drawn on the figure.""",
    "threshold_auto": """threshold : float or "auto", default "auto"
    Voxels with ``|value| <= threshold`` are not drawn. ``"auto"`` is the 95th
    percentile of the non-zero ``|values|`` (the top 5 % of the map is shown); pass
    e.g. ``2.0`` for an absolute, z-like cut-off.""",
    "vmax": """vmax : float, optional
    Top of the colour bar; default the largest ``|value|`` of the map.""",
    "dpi": """dpi : int, default 100
    Resolution of the PNG.""",
    "returns_png": """pathlib.Path
    ``out_png``.""",
}


def _indent(text: str, column: int) -> str:
    """``text`` with every line indented by ``column`` spaces."""
    pad = " " * column
    return "\n".join(pad + line if line else line for line in text.split("\n"))


def fill_doc(func: T) -> T:
    """Decorator: replace the ``%(name)s`` placeholders of ``func.__doc__`` by :data:`DOCDICT`.

    A placeholder stands alone on its line; the entry is indented to its column.

    Parameters
    ----------
    func : callable
        Function or class whose docstring holds the placeholders.

    Returns
    -------
    callable
        ``func``, with its docstring filled in.

    Raises
    ------
    KeyError
        A placeholder that :data:`DOCDICT` does not define (a typo in the docstring).
    """
    doc = func.__doc__
    if doc:
        func.__doc__ = _PLACEHOLDER.sub(_fill, doc)
    return func


def _fill(match: re.Match) -> str:
    """The entry for one placeholder, indented like the placeholder's line."""
    return _indent(DOCDICT[match["name"]], len(match["pad"]))
