"""PyTorch backend: probes, rule application and scoped attribution sessions.

Example::

    with Session(model, layers=["features.3"], rules=RuleMap(GuidedReLU())) as s:
        run = s.forward(x, slice(0, len(x)))
        run.record.acts["features.3"]     # recorded, differentiable layer output
"""

from convscope.backends.torch.probes import Probes
from convscope.backends.torch.relu import rule_relu
from convscope.backends.torch.rule_mode import RuleMode, apply_rules, relu_call
from convscope.backends.torch.session import Session

__all__ = ["Probes", "RuleMode", "Session", "apply_rules", "relu_call", "rule_relu"]
