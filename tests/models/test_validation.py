"""Validation: every reason a model does not fit the method."""

from __future__ import annotations

import pytest
from torch import nn

from kktrecon.models import (
    UnsupportedModelError,
    validate,
)


def test_validate_rejects_unsupported_layers() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1, bias=False))
    reasons = validate(conv)
    assert any("Conv2d" in r for r in reasons)
    with pytest.raises(UnsupportedModelError, match="Conv2d"):
        validate(conv, strict=True)
