"""Tiny models shared by the tests.

- :class:`TinyVGG`: conv-relu-maxpool blocks and an MLP head, every ReLU a module used once
  (the case hook-based libraries such as Captum get right).
- :class:`SpellingNet`: the same shape of network with its ReLUs written one given way
  (:data:`SPELLINGS`): modules, in-place modules, one in-place module reused, ``F.relu``,
  ``torch.relu``, ``Tensor.relu``, their in-place forms, and ``F.threshold(x, 0, 0)``.
- :class:`TinyResidual`: batch-norm and residual blocks with ONE ``nn.ReLU(inplace=True)`` used
  twice per block, as torchvision's ResNet does.
- :func:`hand_net`: a 1-channel 4x4 -> conv 2x2 -> ReLU -> 2x2 max-pool (stride 1) network with
  chosen weights, for hand-computed expected values.
- :class:`Exploding`: wraps a model and raises inside its forward pass when armed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convscope.targets import Channel, MaxNeuron, Neuron

SPELLINGS = ("module", "module_inplace", "shared_inplace", "F.relu", "F.relu_inplace", "F.relu_",
             "torch.relu", "torch.relu_", "Tensor.relu", "Tensor.relu_", "F.threshold")

# looked up at call time (lambdas), so a test may patch the functions it names
_FUNCTIONAL: dict[str, Callable[[Tensor], Tensor]] = {
    "F.relu": lambda t: F.relu(t),
    "F.relu_inplace": lambda t: F.relu(t, inplace=True),
    "F.relu_": lambda t: F.relu_(t),
    "torch.relu": lambda t: torch.relu(t),
    "torch.relu_": lambda t: torch.relu_(t),
    "Tensor.relu": lambda t: t.relu(),
    "Tensor.relu_": lambda t: t.relu_(),
    "F.threshold": lambda t: F.threshold(t, 0.0, 0.0),
}


class TinyVGG(nn.Module):
    """``features`` (conv-relu-pool x2) + ``classifier`` (flatten-linear-relu-dropout-linear), 3x16x16 -> 5."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 12), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(12, 5))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SpellingNet(nn.Module):
    """conv-relu-conv-relu-pool-flatten-linear-relu-linear (3x8x8 -> 4) with ReLUs spelled ``spelling``."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        if spelling not in SPELLINGS:
            raise ValueError(spelling)
        self.spelling = spelling
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(6 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 4)
        if spelling == "module":
            self.relus = nn.ModuleList([nn.ReLU() for _ in range(3)])
        elif spelling == "module_inplace":
            self.relus = nn.ModuleList([nn.ReLU(inplace=True) for _ in range(3)])
        elif spelling == "shared_inplace":
            self.relu = nn.ReLU(inplace=True)

    def act(self, i: int, t: Tensor) -> Tensor:
        if self.spelling in ("module", "module_inplace"):
            return self.relus[i](t)
        if self.spelling == "shared_inplace":
            return self.relu(t)
        return _FUNCTIONAL[self.spelling](t)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(0, self.conv1(x))
        x = self.pool(self.act(1, self.conv2(x)))
        return self.fc2(self.act(2, self.fc1(torch.flatten(x, 1))))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResidual(nn.Module):
    """Stem conv-bn-relu, two residual blocks (one reused in-place ReLU each), avgpool, fc: 3x16x16 -> 5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _Block(6, 6, 1)
        self.layer2 = _Block(6, 8, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():  # non-trivial eval-mode batch-norm statistics
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Exploding(nn.Module):
    """``inner`` with a layer ``boom`` after its first child that raises while ``armed``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.armed = False

    def forward(self, x: Tensor) -> Tensor:
        out = self.inner(x)
        if self.armed:
            raise RuntimeError("boom: the forward pass failed on purpose")
        return out


# input 4x4, one 2x2 conv (weights [[1, 0], [0, -1]], no bias), ReLU, 2x2 max-pool with stride 1
HAND_X = torch.tensor([[0., 1., 0., 2.],
                       [1., 5., 2., 1.],
                       [0., 3., 1., 1.],
                       [2., 1., 1., 0.]]).reshape(1, 1, 4, 4)
HAND_W = torch.tensor([[1., 0.], [0., -1.]]).reshape(1, 1, 2, 2)


def hand_net() -> nn.Sequential:
    """``Sequential(conv "0", relu "1", maxpool "2")`` with the weights :data:`HAND_W`."""
    net = nn.Sequential(nn.Conv2d(1, 1, 2, bias=False), nn.ReLU(), nn.MaxPool2d(2, stride=1))
    with torch.no_grad():
        net[0].weight.copy_(HAND_W)
    return net


def _sparse(entries: dict[tuple[int, int], float]) -> Tensor:
    out = torch.zeros(1, 1, 4, 4)
    for (i, j), v in entries.items():
        out[0, 0, i, j] = v
    return out


# Hand computation for hand_net on HAND_X, conv weights W = [[1, 0], [0, -1]]:
#   conv  Y[i, j] = X[i, j] - X[i+1, j+1] = [[-5, -1, -1], [-2, 4, 1], [-1, 2, 1]]
#   relu  R = [[0, 0, 0], [0, 4, 1], [0, 2, 1]]
#   pool  (2x2, stride 1: overlapping windows) every window's maximum is R[1, 1] = 4
# A signal s at R[i, j] that passes the ReLU reaches the input as +s at X[i, j] and -s at X[i+1, j+1].
# The targets (HAND_TARGETS):
#   "pool_sum":  Channel("2", 0, "sum"): 4 windows each add 1 at R[1, 1] -> signal 4, Y[1, 1] = 4 > 0
#   "-pool_sum": its negative: -4 at R[1, 1] passes the true gradient only (relu(-4) = 0)
#   "mixed":     Neuron("1", 0, 0, 0) - Neuron("1", 0, 1, 2): +1 at R[0, 0] (Y = -5), -1 at R[1, 2] (Y = 1)
#                gradient: +1 blocked, -1 passes; deconv: relu(+1) passes, relu(-1) = 0; guided: both blocked
#   "max":       MaxNeuron("1", 0): the seed is R[1, 1] = 4 itself, which every rule passes
HAND_TARGETS = {"pool_sum": Channel("2", 0, "sum"), "-pool_sum": -Channel("2", 0, "sum"),
                "mixed": Neuron("1", 0, 0, 0) - Neuron("1", 0, 1, 2), "max": MaxNeuron("1", 0)}
HAND_EXPECTED: dict[tuple[str, str], Tensor] = {
    ("pool_sum", "gradient"): _sparse({(1, 1): 4.0, (2, 2): -4.0}),
    ("pool_sum", "deconv"): _sparse({(1, 1): 4.0, (2, 2): -4.0}),
    ("pool_sum", "guided"): _sparse({(1, 1): 4.0, (2, 2): -4.0}),
    ("pool_sum", "input_x_gradient"): _sparse({(1, 1): 4.0 * 5.0, (2, 2): -4.0 * 1.0}),  # X[1,1]=5, X[2,2]=1
    ("-pool_sum", "gradient"): _sparse({(1, 1): -4.0, (2, 2): 4.0}),
    ("-pool_sum", "deconv"): _sparse({}),
    ("-pool_sum", "guided"): _sparse({}),
    ("mixed", "gradient"): _sparse({(1, 2): -1.0, (2, 3): 1.0}),
    ("mixed", "deconv"): _sparse({(0, 0): 1.0, (1, 1): -1.0}),
    ("mixed", "guided"): _sparse({}),
    ("max", "gradient"): _sparse({(1, 1): 4.0, (2, 2): -4.0}),
    ("max", "deconv"): _sparse({(1, 1): 4.0, (2, 2): -4.0}),
    ("max", "guided"): _sparse({(1, 1): 4.0, (2, 2): -4.0}),
}


INPUT_SHAPES: dict[str, tuple[int, ...]] = {"tiny_vgg": (3, 16, 16), "tiny_residual": (3, 16, 16)}
INPUT_SHAPES.update({f"spelling:{s}": (3, 8, 8) for s in SPELLINGS})


def torchvision_model(name: str, seed: int = 0) -> nn.Module:
    """A torchvision architecture (``weights=None``) with fast seeded random weights, in eval mode.

    Built on the meta device and filled with ``N(0, 1/fan_in)`` weights: torchvision's own init of
    VGG16's 138M parameters takes seconds on a busy CPU, and the tests only need *some* weights.
    """
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, name)(weights=None)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (2.0 / fan_in) ** 0.5, generator=g)
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1, generator=g)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
    return model.eval()


def make(name: str, seed: int = 0) -> nn.Module:
    """A freshly initialised test model by name (``tiny_vgg``, ``tiny_residual``, ``spelling:<s>``)."""
    torch.manual_seed(seed)
    if name == "tiny_vgg":
        return TinyVGG()
    if name == "tiny_residual":
        return TinyResidual()
    if name.startswith("spelling:"):
        return SpellingNet(name.split(":", 1)[1])
    raise KeyError(name)


def sample(name: str, n: int = 3, seed: int = 1) -> Tensor:
    """A reproducible input batch for model ``name``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *INPUT_SHAPES[name], generator=g)


def random_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with non-trivial statistics in every batch norm (fresh ones are the
    identity), so code that ignored them would differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model.eval()


def convnet_methods() -> list[str]:
    """The registered methods that run on a convolutional network: all but those reading a
    transformer's attention (attention rollout; see ``convscope.methods.registry.applicable``)."""
    from convscope.methods import methods

    return [name for name, info in methods().items() if not info.cls.needs_attention]
