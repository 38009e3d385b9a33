"""The dataset atlas: the Zeiler-Fergus top-k figure for any layer.

One pass over a data set keeps, for every channel of the chosen layers, the k strongest
activations (:mod:`~convscope.atlas.topk`, exactly mergeable, resumable, shardable with
``torch.distributed``); then each is cropped to its receptive field and projected back to
input space, and the whole is stored in a folder with a manifest and static HTML pages.

Example::

    from convscope import atlas
    a = atlas.build_atlas(model, "shapes:1000", ["features.0", "features.3"], out="atlas", k=9)
    a = atlas.open("atlas"); a.topk("features.3").values[5]
    atlas.write_pages(a)     # atlas/pages/index.html
"""

from convscope.atlas.build import build_atlas
from convscope.atlas.mine import Mined, mine
from convscope.atlas.pages import write_pages
from convscope.atlas.project import project_units
from convscope.atlas.receptive import Field, gradient_boxes, receptive_field
from convscope.atlas.source import open_source
from convscope.atlas.store import Atlas, open_atlas
from convscope.atlas.topk import TopK

open = open_atlas  # noqa: A001 - convscope.atlas.open(path), as documented

__all__ = ["Atlas", "Field", "Mined", "TopK", "build_atlas", "gradient_boxes", "mine", "open", "open_atlas",
           "open_source", "project_units", "receptive_field", "write_pages"]
