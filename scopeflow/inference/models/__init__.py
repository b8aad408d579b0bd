"""Learned models: definitions (torch, imported lazily), pre/post-processing (numpy), registry.

Every model ``<name>`` has a module ``scopeflow.inference.models.<name>`` following
:class:`~scopeflow.inference.models.registry.ModelModule`, and ships in
``scopeflow/inference/weights/`` as ``<name>.onnx`` (the interchange format every backend
runs), ``<name>.pt`` (torch state dict, the reference), ``<name>.json`` (metadata) and
``<name>.md`` (model card).
"""
