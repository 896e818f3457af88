"""A user's own model for a privacy audit: a JSON architecture spec and a weights file, never a pickle.

The spec describes a ``torch.nn.Sequential``, one entry per module, so the user's state-dict keys
(``"1.weight"``, ``"1.bias"``, ``"3.weight"``, …) fit it as they are::

    {"input_shape": [1, 28, 28],
     "layers": ["flatten", {"linear": [784, 1000], "bias": true}, "relu",
                {"linear": [1000, 1000], "bias": false}, "relu", {"linear": [1000, 1], "bias": false}]}

Layers: ``"flatten"``, ``"relu"``, ``{"linear": [in, out], "bias": b}``,
``{"conv2d": [in, out, k], "stride": s, "padding": p, "bias": b}`` and
``{"avgpool2d": k, "stride": s, "padding": p}`` / ``{"maxpool2d": …}``; options take PyTorch's
defaults (``bias`` true, ``stride`` 1 for convolutions and ``k`` for pooling, ``padding`` 0).
Shapes are followed through the stack arithmetically, so a misfit is named before anything is
allocated. Whether the model fits the method is a separate question: :func:`~kktrecon.models.findings`.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from kktrecon.checks import is_int
from kktrecon.errors import CheckpointError, ConfigError
from kktrecon.files import read_json
from kktrecon.models.checkpoints import check_state_dict
from kktrecon.models.cnn import conv_output_size
from kktrecon.registry import Registry

__all__ = ["LAYER_KINDS", "LayerKind", "build_sequential", "fit_weights", "load_spec", "load_weights"]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class LayerKind:
    """One layer name of the spec.

    Attributes:
        sizes: names of its integer sizes, e.g. ``("in_features", "out_features")``.
        options: option name -> default (``None``: derived from the sizes, e.g. a pool's stride).
        shape: ``shape(input_shape, sizes, options)`` -> output shape; returns an error text when the
            input does not fit.
        build: ``build(sizes, options)`` -> the module.
    """

    sizes: tuple[str, ...]
    shape: Callable[[Shape, list[int], dict[str, Any]], Shape | str]
    build: Callable[[list[int], dict[str, Any]], nn.Module]
    options: dict[str, Any] = field(default_factory=dict)


#: The spec's layer names. Add one with ``LAYER_KINDS.register(name, LayerKind(...))``.
LAYER_KINDS: Registry[LayerKind] = Registry("layer", ConfigError)


def _linear_shape(shape: Shape, sizes: list[int], options: dict[str, Any]) -> Shape | str:
    n_in, n_out = sizes
    if len(shape) != 1:
        hint = ': add "flatten" before it' if math.prod(shape) == n_in else ""
        return f"expects {n_in} inputs, the layers before it give shape {shape}{hint}"
    if shape[0] != n_in:
        return f"expects {n_in} inputs, the layers before it give {shape[0]}"
    return (n_out,)


def _spatial(shape: Shape, channels: int | None, k: int, options: dict[str, Any]) -> Shape | str:
    """Output shape of a 2-D convolution or pooling over (C, H, W), or why it does not fit."""
    if len(shape) != 3:
        return f"expects inputs of shape (channels, height, width), the layers before it give shape {shape}"
    if channels is not None and shape[0] != channels:
        return f"expects {channels} input channels, the layers before it give {shape[0]}"
    stride = options["stride"] if options["stride"] is not None else k
    out = tuple(conv_output_size(n, k, stride, options["padding"]) for n in shape[1:])
    if min(out) < 1:
        return f"leaves nothing: its input {shape} is smaller than the kernel {k}"
    return (shape[0], *out)


def _pool_shape(shape: Shape, sizes: list[int], options: dict[str, Any]) -> Shape | str:
    if options["padding"] > sizes[0] // 2:
        return f"expects `padding` <= kernel_size / 2 (PyTorch's limit), got {options['padding']}"
    return _spatial(shape, None, sizes[0], options)


def _conv_shape(shape: Shape, sizes: list[int], options: dict[str, Any]) -> Shape | str:
    out = _spatial(shape, sizes[0], sizes[2], options)
    return out if isinstance(out, str) else (sizes[1], *out[1:])


def _pool(cls: type[nn.Module]) -> LayerKind:
    return LayerKind(
        sizes=("kernel_size",),
        shape=_pool_shape,
        build=lambda s, o: cls(s[0], stride=o["stride"] if o["stride"] is not None else s[0], padding=o["padding"]),
        options={"stride": None, "padding": 0},
    )


LAYER_KINDS.register("flatten", LayerKind((), lambda shape, s, o: (math.prod(shape),), lambda s, o: nn.Flatten()))
LAYER_KINDS.register("relu", LayerKind((), lambda shape, s, o: shape, lambda s, o: nn.ReLU()))
LAYER_KINDS.register(
    "linear",
    LayerKind(
        ("in_features", "out_features"),
        _linear_shape,
        lambda s, o: nn.Linear(s[0], s[1], bias=o["bias"]),
        {"bias": True},
    ),
)
LAYER_KINDS.register(
    "conv2d",
    LayerKind(
        ("in_channels", "out_channels", "kernel_size"),
        _conv_shape,
        lambda s, o: nn.Conv2d(s[0], s[1], s[2], stride=o["stride"], padding=o["padding"], bias=o["bias"]),
        {"stride": 1, "padding": 0, "bias": True},
    ),
)
LAYER_KINDS.register("avgpool2d", _pool(nn.AvgPool2d))
LAYER_KINDS.register("maxpool2d", _pool(nn.MaxPool2d))

_OPTION_NAMES = frozenset(name for kind in LAYER_KINDS.values() for name in kind.options)


def build_sequential(spec: Mapping[str, Any]) -> tuple[nn.Sequential, tuple[int, ...]]:
    """The ``nn.Sequential`` a spec describes (PyTorch's default initialisation) and its input shape.

    Args:
        spec: ``{"input_shape": [...], "layers": [...]}`` as described in this module's docstring.

    Raises:
        ConfigError: naming the layer index and the problem: an unknown layer name, a wrong number
            of sizes, non-integer sizes or options, or a layer whose input does not fit the shape
            the layers before it give.

    Example:
        >>> model, shape = build_sequential({"input_shape": [4], "layers": [{"linear": [4, 2]}, "relu"]})
        >>> list(model.state_dict()), shape
        (['0.weight', '0.bias'], (4,))
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"Expected the spec to be a JSON object. Got {type(spec).__name__}.")
    unknown = sorted(set(spec) - {"input_shape", "layers"})
    missing = sorted({"input_shape", "layers"} - set(spec))
    if unknown or missing:
        raise ConfigError(f"Expected the spec's keys to be ['input_shape', 'layers']. Got {sorted(spec)}.")
    shape = spec["input_shape"]
    if not isinstance(shape, list | tuple) or not shape or not all(is_int(n) and n >= 1 for n in shape):
        raise ConfigError(f"Expected `input_shape` to be a list of positive integers. Got {shape!r}.")
    layers = spec["layers"]
    if not isinstance(layers, list | tuple) or not layers:
        raise ConfigError(f"Expected `layers` to be a non-empty list. Got {layers!r}.")
    input_shape = current = tuple(int(n) for n in shape)
    parsed = []
    for i, entry in enumerate(layers):
        name, sizes, options = _parse(i, entry)
        out = LAYER_KINDS[name].shape(current, sizes, options)
        if isinstance(out, str):
            raise ConfigError(f"layer {i} ({name}) {out}.")
        parsed.append((name, sizes, options))
        current = out
    if len(current) != 1:
        raise ConfigError(
            f"Expected the last layer to give a vector of outputs. Got shape {current}; end with a linear layer."
        )
    return nn.Sequential(*(LAYER_KINDS[n].build(s, o) for n, s, o in parsed)), input_shape


def _parse(i: int, entry: Any) -> tuple[str, list[int], dict[str, Any]]:
    """(name, sizes, options with defaults) of spec entry ``i``; a ConfigError names what is wrong."""
    if isinstance(entry, str):
        name, raw, given = entry, [], {}
    elif isinstance(entry, Mapping):
        # the one key that is a layer name; else the one that is no option (an unknown layer name)
        names = [k for k in entry if k in LAYER_KINDS] or [k for k in entry if k not in _OPTION_NAMES]
        if len(names) != 1:
            raise ConfigError(
                f"layer {i}: Expected exactly one layer name among its keys. Got {sorted(entry)}; "
                f"layer names are {sorted(LAYER_KINDS)}."
            )
        name, raw = names[0], entry[names[0]]
        given = {k: v for k, v in entry.items() if k != name}
    else:
        raise ConfigError(f'layer {i}: Expected a layer name or an object like {{"linear": [4, 2]}}. Got {entry!r}.')
    if name not in LAYER_KINDS:
        raise ConfigError(f"layer {i}: Expected a layer name, one of {sorted(LAYER_KINDS)}. Got {name!r}.")
    kind = LAYER_KINDS[name]
    sizes = [] if raw is None else list(raw) if isinstance(raw, list | tuple) else [raw]
    if len(sizes) != len(kind.sizes):
        raise ConfigError(f"layer {i} ({name}): Expected {len(kind.sizes)} sizes {list(kind.sizes)}. Got {raw!r}.")
    if not all(is_int(n) and n >= 1 for n in sizes):
        raise ConfigError(f"layer {i} ({name}): Expected {list(kind.sizes)} to be positive integers. Got {raw!r}.")
    extra = sorted(set(given) - set(kind.options))
    if extra:
        raise ConfigError(f"layer {i} ({name}): Expected options among {sorted(kind.options)}. Got {extra}.")
    options = {**kind.options, **given}
    for key, value in given.items():
        _check_option(i, name, key, value)
    return name, [int(n) for n in sizes], options


def _check_option(i: int, name: str, key: str, value: Any) -> None:
    if key == "bias" and not isinstance(value, bool):
        raise ConfigError(f"layer {i} ({name}): Expected `bias` to be true or false. Got {value!r}.")
    low = 1 if key == "stride" else 0
    if key != "bias" and not (is_int(value) and value >= low):
        raise ConfigError(f"layer {i} ({name}): Expected `{key}` to be an integer >= {low}. Got {value!r}.")


def load_spec(path: str | Path) -> tuple[nn.Sequential, tuple[int, ...]]:
    """:func:`build_sequential` for the JSON file at ``path``; errors name the file.

    Raises:
        ConfigError: the spec is not valid (see :func:`build_sequential`).
        CheckpointError: the file is missing or not JSON.
    """
    spec = read_json(path)
    try:
        return build_sequential(spec)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Name -> tensor from a ``.safetensors`` file or a ``torch.save``d state dict; nothing else is unpickled.

    Other files are read with ``torch.load(weights_only=True)``, whose unpickler only builds tensors
    and plain containers, so a whole pickled model is refused rather than executed.

    Raises:
        CheckpointError: the file is missing or unreadable, holds other objects than tensors (a whole
            model, a checkpoint dict around the state dict), or holds non-floating tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Expected a weights file at {path}, but there is none.")
    if path.suffix == ".safetensors":
        try:
            loaded: Any = load_file(str(path), device="cpu")
        except (SafetensorError, ValueError, OSError) as err:
            raise CheckpointError(f"{path} could not be read as safetensors (truncated or corrupt?): {err}") from err
    else:
        loaded = _torch_load(path)
    _check_flat(loaded, path)
    not_float = sorted(k for k, v in loaded.items() if not v.dtype.is_floating_point)
    if not_float:
        raise CheckpointError(
            f"{path}: expected floating-point weights. Got {[(k, str(loaded[k].dtype)) for k in not_float]}."
        )
    return dict(loaded)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        # the weights-only unpickler refuses any class but tensors and plain containers, and names it
        # (torch's own message advises turning weights_only off: never relayed)
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found is None:  # not a refused object: bytes that are no pickle of tensors
            raise CheckpointError(f"{path} could not be read as a PyTorch state dict (truncated or corrupt?)") from None
        raise CheckpointError(
            f"{path} holds objects other than tensors (it needs {found.group(1)}); kktrecon never unpickles them, "
            "so nothing in it was "
            "run. A whole pickled model? Save `model.state_dict()` with torch.save, or use safetensors."
        ) from None
    except Exception as err:  # torch.load raises many types (KeyError, RuntimeError, …) on foreign bytes
        raise CheckpointError(f"{path} could not be read as a PyTorch state dict (corrupt?): {err}") from err


def _check_flat(loaded: Any, path: Path) -> None:
    """Refuse anything but a flat mapping of names to tensors, saying what was found instead."""
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (names -> tensors). Got {type(loaded).__name__}.")
    for key, value in loaded.items():
        if isinstance(value, Mapping):
            raise CheckpointError(
                f"{path}: expected a flat state dict (names -> tensors), but found a dict with key {key!r}: pass "
                f"the state dict itself (e.g. torch.save(checkpoint[{key!r}], ...))."
            )
    bad = [(k, type(v).__name__) for k, v in loaded.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise CheckpointError(f"{path}: expected a state dict (names -> tensors). Got other values: {bad[:5]}.")


def fit_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], *, where: str) -> nn.Module:
    """Load ``tensors`` into ``model`` after checking every name and shape; the model takes their dtype.

    Args:
        model: the module the spec built, possibly on the ``meta`` device (shapes only: it is then
            allocated on the CPU once every tensor fits, so a spec far larger than its weights costs nothing).
        tensors: name -> tensor, e.g. from :func:`load_weights`.
        where: the weights' origin (a path), for messages.

    Raises:
        CheckpointError: a missing, unexpected or misshapen tensor (the first one named), a
            non-floating tensor, or NaN/Inf values.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    check_state_dict(expected, got, where=where, against="the architecture spec")
    bad = sorted(k for k, v in tensors.items() if not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(f"{where} holds NaN or Inf values in {bad}.")
    if any(p.is_meta for p in model.parameters()):  # built without memory: allocate now that the shapes fit
        model.to_empty(device="cpu")
    dtypes = {v.dtype for v in tensors.values()}
    if len(dtypes) == 1:
        model.to(dtype=dtypes.pop())
    model.load_state_dict(dict(tensors))
    return model
