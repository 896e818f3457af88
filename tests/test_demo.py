"""The demo pipeline at toy size: offline, resumable, refuses to mix recipes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from kktrecon.attack import ReconstructionConfig, loop
from kktrecon.data import DataConfig
from kktrecon.demo import DemoConfig, demo, estimate_seconds
from kktrecon.models import MLPConfig
from kktrecon.runs import RunDirectoryExistsError
from kktrecon.training import TrainConfig

TINY = DemoConfig(
    victim=TrainConfig(
        data=DataConfig(n_per_class=3, test_per_class=20), model=MLPConfig(hidden=(40, 40)), steps=300, eval_every=100
    ),
    attack=ReconstructionConfig(iterations=30, candidates=8, checkpoint_every=10, log_every=5),
)


def test_demo_runs_offline_and_writes_a_report(tmp_path) -> None:
    result = demo(tmp_path / "d", config=TINY, progress=False)
    assert result.report.is_file() and result.report.name == "report.html"
    assert result.metrics["n_train"] == 6 and result.metrics["n_candidates"] == 8
    assert "of 6 training images recovered" in result.headline and "held-out" in result.headline
    assert result.metrics["held_out"]["count"] == 40  # the test split of the embedded sample: 2 × 20
    record = json.loads((tmp_path / "d" / "demo.json").read_text())
    assert record["headline"] == result.headline
    assert set(record["seconds"]) == {"train", "reconstruct", "evaluate_and_report"}
    assert record["estimate_s"] > 0 and record["total_s"] >= sum(record["seconds"].values()) == pytest.approx(
        sum(result.seconds.values())
    )
    with pytest.raises(RunDirectoryExistsError, match="--force"):
        demo(tmp_path / "d", config=TINY, progress=False)


def test_interrupted_demo_resumes_to_the_same_candidates(tmp_path, interrupt_at) -> None:
    demo(tmp_path / "full", config=TINY, progress=False)
    restore = interrupt_at(loop, "_step", 17)
    with pytest.raises(KeyboardInterrupt):
        demo(tmp_path / "cut", config=TINY, progress=False)
    restore()
    demo(tmp_path / "cut", config=TINY, progress=False, resume=True)
    a = load_file(str(tmp_path / "full" / "reconstruction" / "candidates.safetensors"))
    b = load_file(str(tmp_path / "cut" / "reconstruction" / "candidates.safetensors"))
    assert torch.equal(a["x"], b["x"])
    other = DemoConfig(victim=TINY.victim, attack=ReconstructionConfig(iterations=31, candidates=8))
    with pytest.raises(ValueError, match="another recipe"):
        demo(tmp_path / "cut", config=other, progress=False, resume=True)


def test_time_estimate_is_positive_and_scales_with_the_budget() -> None:
    small = estimate_seconds(TINY)
    assert set(small) == {"train", "reconstruct", "evaluate_and_report"}
    assert all(v >= 0 for v in small.values()) and small["train"] > 0
    longer = DemoConfig(victim=TINY.victim, attack=dataclasses.replace(TINY.attack, iterations=3000))
    assert estimate_seconds(longer)["reconstruct"] > 10 * small["reconstruct"] > 0


def test_a_demo_started_before_the_nested_recipe_is_recognised_on_resume() -> None:
    from kktrecon.configs import config_to_dict
    from kktrecon.demo import DemoConfig, _recorded

    record = config_to_dict(DemoConfig.for_mnist(0))
    model = record["victim"].pop("model")
    model.pop("architecture")
    for key in ("input_shape", "num_outputs"):  # the data decided them; flat records did not keep them
        model.pop(key)
    record["victim"] = {"model": "mlp", **model, "channels": [16, 32], **record["victim"]}  # the old flat form
    assert _recorded(record) == DemoConfig.for_mnist(0)
    assert _recorded(record) != DemoConfig.for_mnist(1)
    assert _recorded({"victim": {}}) is None
