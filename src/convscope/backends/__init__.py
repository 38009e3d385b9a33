"""Framework backends: the framework-specific machinery behind the framework-neutral API.

``convscope.backends.torch`` records layer outputs (probes), applies backward rules to every
ReLU spelling (a scoped ``TorchFunctionMode``) and runs scoped forward passes (sessions).
A TensorFlow backend lives apart and is only imported on demand.
"""
