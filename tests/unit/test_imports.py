"""The import graph of convscope, read with grimp (import-linter's own graph library).

``lint-imports`` (the last step of ``tests/run.py``) holds the contracts in ``pyproject.toml``:
layers, and no import cycle at any package level. The test below checks the edge that had a
cycle before the methods were written once against the backend protocol: ``convscope.methods``
imports the backends, and no backend imports a method (the Keras backend used to import the
method classes it implemented).
"""

from __future__ import annotations

import grimp
import pytest


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("convscope", cache_dir=None)  # lazy imports inside functions included


def chain_text(graph: grimp.ImportGraph, importer: str, imported: str) -> list[str]:
    """Each shortest import chain from package ``importer`` to package ``imported``, one line each,
    with the line numbers of its imports."""
    lines = []
    for chain in sorted(graph.find_shortest_chains(importer, imported)):
        links = [f"{a} -> {b} (l.{','.join(str(d['line_number']) for d in graph.get_import_details(importer=a, imported=b))})"
                 for a, b in zip(chain, chain[1:])]
        lines.append("  " + ", then ".join(links))
    return lines


def test_no_cycle_between_methods_and_backends(graph: grimp.ImportGraph) -> None:
    down = chain_text(graph, "convscope.methods", "convscope.backends")  # the layering's own direction
    up = chain_text(graph, "convscope.backends", "convscope.methods")
    assert not (down and up), (f"import cycle: convscope.methods imports convscope.backends ({len(down)} chains, "
                               f"e.g. {down[0].strip()}), and convscope.backends imports convscope.methods:\n" + "\n".join(up))
