"""TensorFlow tests run in their own process (tests/run.py).

Every module here begins with
``tf = pytest.importorskip("tensorflow", reason=TF_MISSING)`` so that a machine without
TensorFlow reports the skip and its reason instead of failing or passing silently.
"""

from __future__ import annotations

TF_MISSING = "TensorFlow is not installed: pip install 'convscope[tf]'"
