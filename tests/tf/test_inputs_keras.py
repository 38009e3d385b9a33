"""Keras models and the input conveniences: what applies through the backend protocol (target=None,
tuple targets, convergence deltas, multiply_by_inputs, stdevs, numpy GradientSHAP baselines),
checked by identities on small Keras models; several inputs and forward arguments are a clear error."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import keras  # noqa: E402

from convscope.errors import ConvscopeError  # noqa: E402
from convscope.methods import GradientSHAP, IntegratedGradients, Saliency, SmoothGrad  # noqa: E402

X = np.random.default_rng(3).random((2, 6, 6, 2)).astype(np.float32)


def cnn(outputs: int | tuple[int, ...]) -> keras.Model:
    keras.utils.set_random_seed(4)
    size = int(np.prod(outputs))
    head = [keras.layers.Reshape(outputs)] if isinstance(outputs, tuple) else []
    return keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, activation="tanh"),
                             keras.layers.Flatten(), keras.layers.Dense(size), *head])


@pytest.fixture(scope="module")
def scalar() -> keras.Model:
    return cnn(1)


def test_target_none_and_tuple_targets(scalar: keras.Model) -> None:
    np.testing.assert_allclose(Saliency(scalar).attribute(X), Saliency(scalar).attribute(X, 0), atol=1e-6)
    grid = cnn((3, 4))
    np.testing.assert_allclose(Saliency(grid).attribute(X, (1, 2)),
                               Saliency(grid).attribute(X, lambda out: out[:, 1, 2]), atol=1e-6)
    with pytest.raises(ConvscopeError, match="target=None needs a model with one output"):
        Saliency(grid).attribute(X)


def test_deltas_multiply_by_inputs_and_stdevs(scalar: keras.Model) -> None:
    ig = IntegratedGradients(scalar, steps=8, baseline=0.2)
    maps, delta = ig.attribute(X, return_convergence_delta=True)
    plain = IntegratedGradients(scalar, steps=8, baseline=0.2, multiply_by_inputs=False).attribute(X)
    np.testing.assert_allclose(maps, (X - 0.2) * plain, atol=1e-6)
    out = lambda v: scalar(v).numpy()[:, 0]  # noqa: E731
    np.testing.assert_allclose(delta, np.sum(maps, (1, 2, 3)) - (out(X) - out(np.full_like(X, 0.2))), atol=1e-5)
    np.testing.assert_allclose(SmoothGrad(scalar, samples=3, stdevs=0.0).attribute(X), Saliency(scalar).attribute(X),
                               atol=1e-6)


def test_gradient_shap_numpy_baselines_complete_on_a_linear_model() -> None:
    keras.utils.set_random_seed(5)
    linear = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Flatten(), keras.layers.Dense(1)])
    bank = np.random.default_rng(6).random((3, 6, 6, 2)).astype(np.float32)
    maps, delta = GradientSHAP(linear, baselines=bank, samples=4).attribute(X, return_convergence_delta=True)
    assert maps.shape == X.shape and delta.shape == (2 * 4,)
    np.testing.assert_allclose(delta, 0.0, atol=1e-5)  # constant gradients: every path is exact


def test_several_inputs_and_forward_arguments_are_refused(scalar: keras.Model) -> None:
    with pytest.raises(ConvscopeError, match="several input tensors are supported on PyTorch models only"):
        Saliency(scalar).attribute((X, X), 0)
    with pytest.raises(ConvscopeError, match="extra forward arguments are supported on PyTorch models only"):
        Saliency(scalar).attribute(X, 0, forward_args=(1.0,))
