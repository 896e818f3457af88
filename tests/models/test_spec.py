"""Architecture specs and weights files for auditing a user's own model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from kktrecon.errors import CheckpointError, ConfigError
from kktrecon.models import build_sequential, fit_weights, load_spec, load_weights, validate

MLP_SPEC = {
    "input_shape": [1, 28, 28],
    "layers": [
        "flatten",
        {"linear": [784, 1000], "bias": True},
        "relu",
        {"linear": [1000, 1000], "bias": False},
        "relu",
        {"linear": [1000, 1], "bias": False},
    ],
}
CONV_SPEC = {
    "input_shape": [1, 8, 8],
    "layers": [
        {"conv2d": [1, 4, 3], "stride": 2, "padding": 1},
        "relu",
        {"maxpool2d": 2},
        {"conv2d": [4, 3, 1], "bias": False},
        "relu",
        {"avgpool2d": 2, "stride": 1},
        "flatten",
        {"linear": [3, 1], "bias": False},
    ],
}


def _spec(*layers, input_shape=(1, 28, 28)) -> dict:
    return {"input_shape": list(input_shape), "layers": list(layers)}


def test_the_issue_mlp_has_the_users_state_dict_keys() -> None:
    model, shape = build_sequential(MLP_SPEC)
    assert shape == (1, 28, 28)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        "1.weight": (1000, 784),
        "1.bias": (1000,),
        "3.weight": (1000, 1000),
        "5.weight": (1, 1000),
    }
    assert validate(model) == []


def test_a_conv_spec_builds_the_module_it_describes() -> None:
    model, shape = build_sequential(CONV_SPEC)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "3.weight", "7.weight"]
    assert isinstance(model[2], nn.MaxPool2d) and model[2].stride == 2 and model[5].stride == 1
    assert model[0].stride == (2, 2) and model[0].padding == (1, 1)
    assert model(torch.randn(2, *shape)).shape == (2, 1)
    assert validate(model) == []


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (
            _spec("flatten", "relu", {"linear": [800, 10]}, "relu", {"linear": [10, 1]}),
            r"layer 2 \(linear\) expects 800 inputs, the layers before it give 784\.",
        ),
        (
            _spec("flatten", {"linear": [784, 10]}, "relu", {"linear": [12, 1]}),
            r"layer 3 \(linear\) expects 12 inputs, the layers before it give 10\.",
        ),
        (_spec({"linear": [784, 1]}), r'layer 0 \(linear\) .* shape \(1, 28, 28\): add "flatten" before it'),
        (_spec("flatten", "tanh"), r"layer 1: Expected a layer name, one of \['avgpool2d', .*\]\. Got 'tanh'\."),
        (_spec({"conv2d": [1, 2]}), r"layer 0 \(conv2d\): Expected 3 sizes \['in_channels', 'out_channels', "),
        (_spec({"linear": [784.0, 1]}), r"layer 0 \(linear\): Expected .* to be positive integers\. Got \[784\.0, 1\]"),
        (_spec({"conv2d": [3, 2, 3]}), r"layer 0 \(conv2d\) expects 3 input channels, the layers before it give 1"),
        (_spec({"conv2d": [1, 2, 3], "stide": 2}), r"layer 0 \(conv2d\): Expected options among .* Got \['stide'\]"),
        (_spec({"linear": [1, 2], "bias": "no"}), r"layer 0 \(linear\): Expected `bias` to be true or false"),
        (_spec({"maxpool2d": 2, "stride": 0}), r"layer 0 \(maxpool2d\): Expected `stride` to be an integer >= 1"),
        (_spec({"conv2d": [1, 2, 5]}, input_shape=(1, 3, 3)), r"layer 0 \(conv2d\) leaves nothing"),
        (_spec({"conv2d": [1, 2, 3]}), r"Expected the last layer to give a vector of outputs\. Got shape"),
        (_spec(7), r"layer 0: Expected a layer name or an object"),
        ({"layers": ["flatten"]}, r"Expected the spec's keys to be \['input_shape', 'layers'\]"),
        (_spec("flatten", input_shape=(0, 2)), r"Expected `input_shape` to be a list of positive integers"),
    ],
)
def test_bad_specs_name_the_layer_and_the_problem(spec: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_sequential(spec)


def test_load_spec_reads_json_and_names_the_file(tmp_path) -> None:
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(CONV_SPEC))
    model, shape = load_spec(path)
    assert shape == (1, 8, 8) and len(model) == 8
    path.write_text(json.dumps(_spec("flatten", {"linear": [700, 1]})))
    with pytest.raises(ConfigError, match=r"arch\.json: layer 1 \(linear\) expects 700 inputs"):
        load_spec(path)


def _model_and_state():
    model, _ = build_sequential(CONV_SPEC)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def test_load_weights_accepts_a_torch_state_dict_and_safetensors(tmp_path) -> None:
    model, state = _model_and_state()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    save_file(state, str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.safetensors"):
        loaded = load_weights(tmp_path / name)
        assert sorted(loaded) == sorted(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_weights_refuses_a_pickled_module(tmp_path) -> None:
    model, _ = _model_and_state()
    torch.save(model, tmp_path / "model.pt")
    refused = r"objects other than tensors \(it needs torch\.nn\..*Sequential\).*never unpickles"
    with pytest.raises(CheckpointError, match=refused):
        load_weights(tmp_path / "model.pt")


def test_load_weights_refuses_a_checkpoint_around_the_state_dict(tmp_path) -> None:
    model, _ = _model_and_state()
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"found a dict with key 'state_dict': pass the state dict itself"):
        load_weights(tmp_path / "ckpt.pt")
    torch.save({"w": torch.ones(2), "epoch": 3}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"Got other values: \[\('epoch', 'int'\)\]"):
        load_weights(tmp_path / "mixed.pt")


def test_load_weights_refuses_integer_tensors_and_garbage(tmp_path) -> None:
    torch.save({"w": torch.ones(2, dtype=torch.int64)}, tmp_path / "int.pt")
    with pytest.raises(CheckpointError, match=r"expected floating-point weights\. Got \[\('w', 'torch\.int64'\)\]"):
        load_weights(tmp_path / "int.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a state dict")
    with pytest.raises(CheckpointError, match="could not be read as a PyTorch state dict"):
        load_weights(tmp_path / "junk.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="could not be read as safetensors"):
        load_weights(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="Expected a weights file at"):
        load_weights(tmp_path / "absent.pt")


def test_fit_weights_loads_them_and_takes_their_dtype(tmp_path) -> None:
    source, state = _model_and_state()
    state = {k: v.double() for k, v in state.items()}
    fresh, shape = build_sequential(CONV_SPEC)
    assert not torch.equal(fresh[0].weight, source[0].weight)  # fresh init differs
    fit_weights(fresh, state, where="w.pt")
    x = torch.randn(3, *shape, dtype=torch.float64)
    torch.testing.assert_close(fresh(x), source.double()(x))
    assert fresh[0].weight.dtype == torch.float64


def test_fit_weights_names_the_first_mismatching_tensor() -> None:
    model, state = _model_and_state()
    wrong = {**state, "3.weight": torch.zeros(5, 4, 1, 1), "7.weight": torch.zeros(1, 4)}
    first = r"w\.pt does not match the architecture spec: tensor '3\.weight' has shape \(5, 4, 1, 1\), expected"
    with pytest.raises(CheckpointError, match=first):
        fit_weights(model, wrong, where="w.pt")
    missing = {k: v for k, v in state.items() if k != "0.bias"}
    with pytest.raises(CheckpointError, match=r"tensor '0\.bias' is missing"):
        fit_weights(model, missing, where="w.pt")
    with pytest.raises(CheckpointError, match=r"NaN or Inf values in \['0\.weight'\]"):
        fit_weights(model, {**state, "0.weight": torch.full_like(state["0.weight"], float("nan"))}, where="w.pt")


class _Payload:
    def __reduce__(self):  # what a malicious checkpoint carries: a call to run on unpickling
        return (print, ("ran",))


def test_a_malicious_pickle_is_named_for_what_it_is_and_nothing_runs(tmp_path, capsys) -> None:
    torch.save({"w": torch.ones(2), "x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as info:
        load_weights(tmp_path / "evil.pt")
    message = str(info.value)
    assert "objects other than tensors" in message and "nothing in it was run" in message
    assert "weights_only" not in message and "corrupt" not in message  # torch's advice is never relayed
    assert "ran" not in capsys.readouterr().out


def test_a_spec_far_larger_than_its_weights_is_refused_before_anything_is_allocated(tmp_path) -> None:
    from safetensors.torch import save_file

    from kktrecon.attack.victim import Victim

    save_file({"1.weight": torch.zeros(10, 784), "1.bias": torch.zeros(10), "3.weight": torch.zeros(1, 10)},
              str(tmp_path / "w.safetensors"))  # fmt: skip
    huge = 10**6  # 784-10⁶-10⁶-1: 4 TB of float32 if it were built
    spec = {"input_shape": [1, 28, 28], "layers": ["flatten", {"linear": [784, huge]}, "relu",
            {"linear": [huge, huge], "bias": False}, "relu", {"linear": [huge, 1], "bias": False}]}  # fmt: skip
    (tmp_path / "arch.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match=r"'1\.weight' has shape \(10, 784\), expected \(1000000, 784\)"):
        Victim.from_spec(tmp_path / "w.safetensors", tmp_path / "arch.json")
