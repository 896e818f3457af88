"""Victim models: the architecture registry, the attack's modified ReLU, validation, checkpoints.

What lives here:

- ``registry.py``: :data:`ARCHITECTURES`, :func:`register_architecture`, :func:`build_model`.
  A new kind of victim is one module with a config dataclass and a seeded builder.
- ``mlp.py``: ReLU MLPs with a bias policy (the paper's d-1000-1000-1 and its ablations); :class:`MLPConfig`
  (``ModelConfig`` is its deprecated old name).
- ``cnn.py``: ReLU CNNs (strided Conv2d stacks, then a linear head) with the same bias policies.
- ``activations.py``: :class:`ModifiedReLU` (ReLU forward, sigmoid(α·z) backward) for the attack.
- ``validation.py``: :func:`validate` and :func:`findings`, every reason a model does not fit the
  method's assumptions, judged layer by layer through a registry of per-type rules.
- ``spec.py``: a user's own ``nn.Sequential`` for a privacy audit, from a JSON architecture spec and a
  safetensors or ``torch.save``d state dict (never an arbitrary pickle).
- ``checkpoints.py``: safetensors weights + JSON manifest; loading never unpickles.

What does not: how victims are trained (``kktrecon.training``) and attacked (``kktrecon.attack``).
"""

from __future__ import annotations

from kktrecon.errors import CheckpointError, UnsupportedModelError
from kktrecon.models.activations import ModifiedReLU, with_modified_relu
from kktrecon.models.checkpoints import load_checkpoint, save_checkpoint, weights_fingerprint
from kktrecon.models.cnn import CNN, CNNConfig
from kktrecon.models.mlp import BIAS_POLICIES, MLP, MLPConfig, ModelConfig
from kktrecon.models.registry import ARCHITECTURES, Architecture, build_model, register_architecture
from kktrecon.models.spec import build_sequential, fit_weights, load_spec, load_weights
from kktrecon.models.validation import Finding, findings, validate, warn_if_unsupported

__all__ = [
    "ARCHITECTURES",
    "BIAS_POLICIES",
    "CNN",
    "MLP",
    "Architecture",
    "CNNConfig",
    "CheckpointError",
    "Finding",
    "MLPConfig",
    "ModelConfig",  # deprecated alias of MLPConfig
    "ModifiedReLU",
    "UnsupportedModelError",
    "build_model",
    "build_sequential",
    "findings",
    "fit_weights",
    "load_checkpoint",
    "load_spec",
    "load_weights",
    "register_architecture",
    "save_checkpoint",
    "validate",
    "warn_if_unsupported",
    "weights_fingerprint",
    "with_modified_relu",
]
