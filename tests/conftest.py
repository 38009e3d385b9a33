"""Shared fixtures. torch (and torchvision, when installed) are imported first, on purpose:
importing torchvision after TensorFlow in one process can segfault."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

try:  # import order matters: torchvision before anything that may pull in TensorFlow
    import torchvision  # noqa: F401
except ImportError:  # pragma: no cover - torchvision is a test dependency
    pass
try:  # and Triton (torch's optimizers import it lazily), as convscope.tf does before TensorFlow
    import triton  # noqa: F401
except ImportError:  # pragma: no cover - only CUDA builds of torch bring it
    pass

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache directory the zoo trains into: shared by the run (tests/run.py sets it)."""
    path = os.environ.get("CONVSCOPE_CACHE")
    if path is None:
        path = str(tmp_path_factory.mktemp("zoo-cache"))
        os.environ["CONVSCOPE_CACHE"] = path
    return Path(path)


@pytest.fixture(scope="session")
def shapes_vgg(zoo_cache: Path) -> torch.nn.Module:
    """The trained shapes-vgg zoo model (trained once per test run)."""
    from convscope import zoo

    return zoo.load("shapes-vgg")


@pytest.fixture(scope="session")
def shapes_resnet(zoo_cache: Path) -> torch.nn.Module:
    """The trained shapes-resnet zoo model (trained once per test run)."""
    from convscope import zoo

    return zoo.load("shapes-resnet")


@pytest.fixture(scope="session")
def zoo_model(zoo_cache: Path):  # noqa: ANN201 - returns a loader
    """Any zoo model by name, trained once per test run: ``zoo_model("shapes-vit")``."""
    from convscope import zoo

    loaded: dict[str, torch.nn.Module] = {}

    def load(name: str) -> torch.nn.Module:
        if name not in loaded:
            loaded[name] = zoo.load(name)
        return loaded[name]

    return load
