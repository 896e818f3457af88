"""Config round trips and dotted settings: what every manifest and every --set goes through."""

from __future__ import annotations

import pytest

from kktrecon.configs import config_from_dict, config_to_dict, parse_value, settable_names, with_settings
from kktrecon.errors import ConfigError
from kktrecon.models import ARCHITECTURES, CNNConfig, MLPConfig
from kktrecon.training import TrainConfig

KINDS = {"model": {name: arch.config for name, arch in ARCHITECTURES.items()}}


def test_dotted_settings_reach_nested_fields_and_switch_kinds() -> None:
    config = with_settings(TrainConfig(), {"model": "cnn", "model.padding": "0", "lr": "0.5"}, kinds=KINDS)
    assert config.model == CNNConfig(padding=0) and config.lr == 0.5
    assert with_settings(TrainConfig(), {"model.hidden": "20,30"}, kinds=KINDS).model == MLPConfig(hidden=(20, 30))
    assert config_from_dict(TrainConfig, config_to_dict(config)) == config  # the kind is saved beside its fields


def test_unknown_fixed_and_unparsable_settings_are_refused_with_the_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"one of \[.*'model\.hidden'.*\]\. Got 'model\.pading'"):
        with_settings(TrainConfig(), {"model.pading": "1"}, kinds=KINDS)
    with pytest.raises(ConfigError, match="left unset"):
        with_settings(TrainConfig(), {"model.input_shape": "1,2,2"}, kinds=KINDS, fixed=("model.input_shape",))
    with pytest.raises(ConfigError, match="`model` to be one of"):
        with_settings(TrainConfig(), {"model": "resnet"}, kinds=KINDS)
    with pytest.raises(ConfigError, match="`lr` to be a number"):
        with_settings(TrainConfig(), {"lr": "fast"}, kinds=KINDS)
    assert "model.input_shape" not in settable_names(TrainConfig(), kinds=KINDS, fixed=("model.input_shape",))


def test_values_parse_by_the_fields_type() -> None:
    assert parse_value("x", "none", int | None) is None
    assert parse_value("x", "(1, 2)", tuple[int, ...]) == (1, 2)
    assert parse_value("x", "yes", bool) is True
    with pytest.raises(ConfigError, match="true or false"):
        parse_value("x", "maybe", bool)


def test_an_optional_part_is_switched_on_by_its_fields_and_off_by_none() -> None:
    from kktrecon.attack import ReconstructionConfig

    on = with_settings(ReconstructionConfig(), {"split.every": "500", "split.steps": "0.1,0.01"})
    assert on.split is not None and on.split.every == 500 and on.split.steps == (0.1, 0.01)
    assert on.split.max_splits == type(on.split)().max_splits  # the rest keep their defaults
    assert with_settings(on, {"split": "none"}).split is None
    assert {"split", "split.every"} <= set(settable_names(ReconstructionConfig()))
    with pytest.raises(ConfigError, match="`split` to be none"):
        with_settings(on, {"split": "yes"})
    assert config_from_dict(ReconstructionConfig, config_to_dict(on)) == on
