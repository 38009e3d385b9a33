"""Exact incremental inference for local changes of the input (Krypton: Nakandala et al., SIGMOD
2019): a change inside a box reaches only a cone of each layer, so each node is recomputed on that
cone and the rest copied from the clean pass. Used by :class:`~convscope.methods.Occlusion`.

Example::

    scorer, report = open_scores(model, {}, targets, x, (16, 16), True)
    print(report)   # which path, why, and per node how it ran
"""

from convscope.backends.torch.incremental.graph import WHOLE_AREA, IncrementalGraph, NotApplicable
from convscope.backends.torch.incremental.report import NodeRun, Report
from convscope.backends.torch.incremental.scores import AUTO_MAX_SHARE, IncrementalScores, open_scores

__all__ = ["AUTO_MAX_SHARE", "WHOLE_AREA", "IncrementalGraph", "IncrementalScores", "NodeRun", "NotApplicable",
           "Report", "open_scores"]
