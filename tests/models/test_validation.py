"""Validation: every reason a model does not fit the method, each layer named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kktrecon.models import (
    Finding,
    UnsupportedModelError,
    findings,
    validate,
    warn_if_unsupported,
)
from kktrecon.models.validation import LAYER_RULES


def _bad() -> nn.Sequential:
    """A BatchNorm, a Tanh and a late bias: three reasons, two of them fatal."""
    return nn.Sequential(
        nn.Linear(16, 8),
        nn.BatchNorm1d(8),
        nn.Tanh(),
        nn.Linear(8, 4, bias=True),
        nn.ReLU(),
        nn.Linear(4, 1, bias=False),
    )


def test_every_bad_layer_is_listed_with_its_name_and_type() -> None:
    found = findings(_bad())
    assert [(f.layer, f.kind, f.fatal) for f in found] == [
        ("1", "BatchNorm1d", True),
        ("2", "Tanh", True),
        ("3", "Linear", False),
    ]
    reasons = validate(_bad())
    assert reasons == [str(f) for f in found]
    assert reasons[0].startswith("layer '1' (BatchNorm1d): normalisation is not supported")
    assert "running statistics are not parameters" in reasons[0]
    assert "layer '2' (Tanh)" in reasons[1] and "modified ReLU replaces only ReLU" in reasons[1]
    assert "layer '3' (Linear)" in reasons[2] and "not homogeneous" in reasons[2]


def test_strict_raises_with_every_reason() -> None:
    with pytest.raises(UnsupportedModelError, match=r"\(3 reasons\)") as info:
        validate(_bad(), strict=True)
    for name in ("'1' (BatchNorm1d)", "'2' (Tanh)", "'3' (Linear)"):
        assert name in str(info.value)


def test_warn_if_unsupported_warns_the_late_bias_and_raises_both_fatal_reasons() -> None:
    with pytest.warns(UserWarning, match="not homogeneous"), pytest.raises(UnsupportedModelError) as info:
        warn_if_unsupported(_bad())
    message = str(info.value)
    assert "(2 reasons)" in message and "BatchNorm1d" in message and "Tanh" in message
    assert "'3' (Linear)" not in message


def test_supported_layers_pass() -> None:
    conv = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 2, 1, bias=False),
        nn.ReLU(),
        nn.AvgPool2d(1),
        nn.AdaptiveAvgPool2d(2),
        nn.Dropout(0.5),
        nn.Identity(),
        nn.Flatten(),
        nn.Sequential(nn.Linear(8, 3, bias=False), nn.ReLU()),
        nn.Linear(3, 1, bias=False),
    ).eval()
    assert validate(conv) == []
    warn_if_unsupported(conv)  # neither warns nor raises


def test_nested_layers_are_named_by_their_qualified_name() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.GELU())])
            self.head = nn.Linear(4, 1, bias=False)

    (only,) = findings(Net())
    assert only == Finding("blocks.0.1", "GELU", True, only.reason)


@pytest.mark.parametrize(
    ("layer", "fatal", "match"),
    [
        (nn.LeakyReLU(), True, "not supported yet: LeakyReLU is positively homogeneous"),
        (nn.LayerNorm(4), True, "normalisation is not supported"),
        (nn.Embedding(4, 4), True, "unknown layer type, not supported"),
        (nn.Dropout(0.1), False, "training mode"),
    ],
)
def test_each_rule_names_its_reason(layer: nn.Module, fatal: bool, match: str) -> None:
    found = findings(nn.Sequential(nn.Linear(4, 4), layer, nn.Linear(4, 1, bias=False)))
    assert [(f.layer, f.fatal) for f in found] == [("1", fatal)]
    assert match in found[0].reason


def test_a_custom_module_with_parameters_of_its_own_is_fatal() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(4, 1, bias=False)
            self.scale = nn.Parameter(torch.ones(1))

    (only,) = findings(Scaled())
    assert only.layer == "" and only.fatal and "['scale']" in only.reason
    assert str(only).startswith("the model (Scaled)")


def test_a_model_without_parametrised_layers_is_fatal() -> None:
    (only,) = findings(nn.Sequential(nn.Flatten(), nn.ReLU()))
    assert only.fatal and "no Linear or convolution layer" in only.reason


def test_new_layer_types_are_judged_by_their_registered_rule(monkeypatch) -> None:
    class Doubler(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    model = nn.Sequential(nn.Linear(4, 1, bias=False), Doubler())
    assert "unknown layer type" in validate(model)[0]
    monkeypatch.setitem(LAYER_RULES, Doubler, lambda module, walk: None)  # linear, hence homogeneous
    assert validate(model) == []
