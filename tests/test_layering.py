"""The package's layering contract (docs/architecture.md), checked on every import statement."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "import_graph.py"


@pytest.fixture(scope="module")
def import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_package_has_a_stage(import_graph):
    parts = {import_graph.top(m) for m in import_graph.build_graph()}
    assert parts <= set(import_graph.LAYERS), parts - set(import_graph.LAYERS)


def test_no_package_imports_a_later_stage(import_graph):
    assert import_graph.layer_violations(import_graph.build_graph()) == []


def test_no_import_cycle(import_graph):
    assert import_graph.cycles(import_graph.build_graph()) == []


def test_the_checker_sees_violations(import_graph):
    """The checks above can fail: an upward import and a cycle are found in a made-up graph."""
    graph = {"anomaly.io.bids": {"anomaly.crs.model"}, "anomaly.crs.model": {"anomaly.crs.losses"},
             "anomaly.crs.losses": {"anomaly.crs.model"}}
    assert len(import_graph.layer_violations(graph)) == 1
    assert import_graph.cycles(graph) == [["anomaly.crs.losses", "anomaly.crs.model", "anomaly.crs.losses"]]
