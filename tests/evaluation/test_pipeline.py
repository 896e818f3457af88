"""The pipeline: in-memory evaluation, files written, pooling of runs, end to end with real victims."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from kktrecon.attack.victim import Victim
from kktrecon.evaluation import (
    VictimMismatchError,
    evaluate_candidates,
    load_candidates,
    pipeline,
    write_evaluation,
)
from kktrecon.pipelines import evaluate
from tests.evaluation.helpers import _images


def test_evaluate_candidates_rows_and_metrics() -> None:
    train, mean = _images(4, seed=13)
    labels = torch.tensor([0, 1, 0, 1])
    outputs = torch.tensor([[-2.0], [1.0], [-4.0], [3.0]], dtype=torch.float64)
    cands = torch.cat([0.1 * train[:3], torch.zeros(1, 1, 12, 12, dtype=torch.float64)])
    lam = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)
    r = evaluate_candidates(cands, train, labels, mean, outputs=outputs, lam=lam, source_index=torch.arange(10, 14))
    assert [row["margin"] for row in r.rows] == [2.0, 1.0, 4.0, 3.0]
    assert [row["normalized_margin"] for row in r.rows] == [2.0, 1.0, 4.0, 3.0]
    assert [row["source_index"] for row in r.rows] == [10, 11, 12, 13]
    assert [row["lambda"] for row in r.rows[:3]] == [0.5, 0.25, 0.125]
    assert r.metrics["n_reconstructed"] >= 3 and r.metrics["min_margin"] == 1.0
    assert r.metrics["n_train"] == 4 and r.metrics["n_candidates"] == 4


def test_multiclass_margin_is_true_minus_best_other() -> None:
    train, mean = _images(3, seed=14)
    outputs = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [1.0, 1.0, 4.0]], dtype=torch.float64)
    r = evaluate_candidates(train, train, torch.tensor([0, 2, 1]), mean, outputs=outputs)
    assert [row["output"] for row in r.rows] == [3.0, 5.0, 1.0]
    assert [row["margin"] for row in r.rows] == [2.0, 3.0, -3.0]
    assert math.isnan(r.rows[0]["normalized_margin"])  # a misclassified sample: no normalisation
    assert r.metrics["multiclass"] is True


def test_evaluate_candidates_rejects_bad_arguments() -> None:
    train, mean = _images(3)
    y = torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="`model` or `outputs`"):
        evaluate_candidates(train, train, y, mean)
    with pytest.raises(ValueError, match="`threshold` to be an SSIM value"):
        evaluate_candidates(train, train, y, mean, outputs=torch.ones(3), threshold=2.0)
    with pytest.raises(ValueError, match="`lam` of shape"):
        evaluate_candidates(train, train, y, mean, outputs=torch.ones(3), lam=torch.ones(4))
    with pytest.raises(ValueError, match="binary labels"):
        evaluate_candidates(train, train, torch.tensor([0, 1, 2]), mean, outputs=torch.ones(3))


# ----------------------------------------------------------------------------------------------
# Files: pooling, refusal, written formats
# ----------------------------------------------------------------------------------------------


def _write_rec_dir(path: Path, x: torch.Tensor, victim: Path) -> Path:
    path.mkdir(parents=True)
    m = x.shape[0]
    y = torch.cat([-torch.ones(m // 2), torch.ones(m - m // 2)]).double()
    save_file(
        {"x": x.contiguous(), "lam": torch.linspace(0.1, 1.0, m).double(), "y": y}, str(path / "candidates.safetensors")
    )
    manifest = {
        "victim": {"run_dir": str(victim)},
        "config": {"lr": 0.1},
        "timings": {},
        "loss_history": [],
        "iterations": 3,
    }
    (path / "reconstruction.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture
def fake_victim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    train, mean = _images(6, seed=20)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 1, bias=False)).double()
    run_dir = tmp_path / "victim"
    run_dir.mkdir()
    manifest = {
        "data": {"dataset": "fake"},
        "model": {"width": 3},
        "train_mean": mean.flatten().tolist(),
        "metrics": {},
    }
    (run_dir / "model.json").write_text(json.dumps(manifest))
    dataset = SimpleNamespace(
        x_train=train,
        y_train=labels,
        mean=mean,
        train_indices=torch.arange(100, 106),
        class_names=("odd", "even"),
        is_image=True,
        x_test=_images(4, seed=21)[0],
        objective="binary",
        targets=(),
        config=SimpleNamespace(dataset="fake", task="t", test_per_class=2),
    )
    victim = Victim(model=model, input_shape=(1, 12, 12), fingerprint="fake", manifest=manifest, run_dir=run_dir)
    assert victim.downsample == 1
    loaded: list[Path] = []

    def load(path: Path, *, data_root: object, device: torch.device) -> tuple[Victim, SimpleNamespace]:
        loaded.append(path)
        return victim, dataset

    monkeypatch.setattr(pipeline, "load_victim", load)
    return SimpleNamespace(run_dir=run_dir, train=train, mean=mean, loaded=loaded)


def test_pooling_two_rec_dirs_keeps_provenance(tmp_path: Path, fake_victim: SimpleNamespace) -> None:
    g = torch.Generator().manual_seed(21)
    noise = 0.3 * torch.randn(8, 1, 12, 12, generator=g, dtype=torch.float64)
    run0 = _write_rec_dir(tmp_path / "rec0", torch.cat([noise[:4], 0.5 * fake_victim.train[:3]]), fake_victim.run_dir)
    run1 = _write_rec_dir(tmp_path / "rec1", torch.cat([0.2 * fake_victim.train[3:], noise[4:]]), fake_victim.run_dir)
    out = tmp_path / "eval"
    result = evaluate([run0, run1], out_dir=out)

    assert fake_victim.loaded == [fake_victim.run_dir.resolve()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_candidates"] == 14 and metrics["n_candidates_per_run"] == [7, 7]
    assert metrics["n_train"] == 6 and metrics["n_reconstructed"] == 6
    assert metrics["rec_dirs"] == [str(run0.resolve()), str(run1.resolve())]
    assert metrics["victim_run_dir"] == str(fake_victim.run_dir.resolve())
    required = {"ssim_threshold", "n_reconstructed_reference", "median_ssim_aligned", "median_ssim_reference"}
    assert required | {"median_psnr", "best_buddies"} <= set(metrics)

    with (out / "per_sample.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    expected_columns = [
        "index", "source_index", "label", "output", "margin", "normalized_margin", "ssim_reference",
        "ssim_aligned", "psnr", "candidate", "candidate_run", "lambda",
    ]  # fmt: skip
    assert list(rows[0])[: len(expected_columns)] == expected_columns
    assert [(int(r["candidate_run"]), int(r["candidate"])) for r in rows] == [
        (0, 4), (0, 5), (0, 6), (1, 0), (1, 1), (1, 2)
    ]  # fmt: skip
    assert [int(r["source_index"]) for r in rows] == list(range(100, 106))
    assert float(rows[0]["lambda"]) == pytest.approx(0.1 + 4 * 0.9 / 6)
    assert {"fig_pairs.png", "fig_ssim_vs_output.png"} <= {p.name for p in out.iterdir()}
    assert set(result.files) == {"metrics.json", "per_sample.csv", "fig_pairs.png", "fig_ssim_vs_output.png"}


def test_evaluate_writes_into_first_rec_dir_by_default(tmp_path: Path, fake_victim: SimpleNamespace) -> None:
    run0 = _write_rec_dir(tmp_path / "rec0", fake_victim.train.clone(), fake_victim.run_dir)
    evaluate(run0, figures=False)
    assert (run0 / "metrics.json").is_file() and (run0 / "per_sample.csv").is_file()
    assert not (run0 / "fig_pairs.png").exists()


def test_evaluation_draws_only_through_the_hook_it_is_given(tmp_path: Path) -> None:
    import kktrecon
    from kktrecon import pipelines

    train, mean = _images(3, seed=5)
    result = evaluate_candidates(0.5 * train, train, torch.tensor([0, 1, 0]), mean, outputs=torch.ones(3, 1))
    assert set(write_evaluation(result, tmp_path / "plain")) == {"metrics.json", "per_sample.csv"}

    def draw(res: object, out: Path) -> dict[str, Path]:
        assert res is result and not (out / "metrics.json").exists()  # drawn before metrics.json lists it
        (out / "fig.png").write_bytes(b"png")
        return {"fig.png": out / "fig.png"}

    write_evaluation(result, tmp_path / "drawn", draw=draw)
    assert json.loads((tmp_path / "drawn" / "metrics.json").read_text())["files"] == ["fig.png", "per_sample.csv"]
    assert kktrecon.evaluate is pipelines.evaluate  # the public stage evaluates, then draws reporting's figures


def test_pooling_refuses_different_victims(tmp_path: Path) -> None:
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    a = _write_rec_dir(tmp_path / "a", x, tmp_path / "victim_a")
    b = _write_rec_dir(tmp_path / "b", x, tmp_path / "victim_b")
    with pytest.raises(VictimMismatchError, match="different victims"):
        load_candidates([a, b])
    c = _write_rec_dir(tmp_path / "c", torch.zeros(2, 1, 5, 5, dtype=torch.float64), tmp_path / "victim_a")
    with pytest.raises(VictimMismatchError, match="candidates of shape"):
        load_candidates([a, c])


def test_missing_candidates_are_a_clear_error(tmp_path: Path) -> None:
    rec = _write_rec_dir(tmp_path / "a", torch.zeros(2, 1, 4, 4, dtype=torch.float64), tmp_path / "v")
    (rec / "candidates.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="Did the reconstruction finish"):
        load_candidates(rec)
    with pytest.raises(ValueError, match="at least one reconstruction directory"):
        load_candidates([])


# ----------------------------------------------------------------------------------------------
# End to end with real victims written by kktrecon.models (toy and the embedded MNIST sample)
# ----------------------------------------------------------------------------------------------


def _real_victim(tmp_path: Path, data_config: object, input_shape: tuple[int, ...], data_root: object) -> Path:
    from kktrecon.configs import config_to_dict
    from kktrecon.data import load_dataset
    from kktrecon.models import ModelConfig, build_model, save_checkpoint

    ds = load_dataset(data_config, data_root=data_root)
    model = build_model(ModelConfig(input_shape=input_shape, hidden=(16,), init_scale=1.0), seed=0)
    run_dir = tmp_path / "victim"
    run_dir.mkdir()
    save_checkpoint(
        run_dir, model, {"data": config_to_dict(data_config), "train_mean": ds.mean.reshape(-1).tolist(), "metrics": {}}
    )
    return run_dir


def test_end_to_end_mnist_sample(tmp_path: Path) -> None:
    from kktrecon.data import SAMPLE_ROOT, DataConfig, load_dataset

    config = DataConfig(dataset="mnist", task="odd-even", n_per_class=4, test_per_class=4)
    run_dir = _real_victim(tmp_path, config, (1, 28, 28), SAMPLE_ROOT)
    train = load_dataset(config, data_root=SAMPLE_ROOT, dtype=torch.float64).x_train
    g = torch.Generator().manual_seed(0)
    cands = torch.cat([0.2 * train[[5, 1, 7, 0]], 0.3 * torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64)])
    rec = _write_rec_dir(tmp_path / "rec", cands, run_dir)
    result = evaluate(rec, data_root=SAMPLE_ROOT)
    m = result.metrics
    assert m["n_train"] == 8 and m["n_candidates"] == 8 and m["downsample"] == 1
    assert [row["candidate"] for row in result.rows if row["ssim_aligned"] > 0.99] == [3, 1, 0, 2]
    # Other digits reach the threshold too (black backgrounds): the chance level says how often.
    assert m["n_reconstructed"] >= 4 and m["chance_n_reconstructed"] >= 1
    assert 0.3 < m["chance_median_ssim_aligned"] < 0.7
    assert m["data"]["dataset"] == "mnist" and m["class_names"] == list(result.class_names)

    from kktrecon.reporting import report

    page = report(rec).read_text(encoding="utf-8")
    assert f"{m['n_recovered']} of 8 training images recovered" in page and "init_scale" in page
    assert "the nearest other training image for" in page and "held-out look-alike" in page


def test_end_to_end_toy(tmp_path: Path) -> None:
    from kktrecon.data import DataConfig, load_dataset

    config = DataConfig(dataset="toy", task="grid", n_per_class=10)
    run_dir = _real_victim(tmp_path, config, (2,), None)
    points = load_dataset(config, dtype=torch.float64).x_train
    rec = _write_rec_dir(tmp_path / "rec", torch.cat([points[:6] + 0.01, torch.tensor([[3.0, 3.0]])]), run_dir)
    result = evaluate(rec)
    m = result.metrics
    assert m["kind"] == "toy" and m["n_found"] == 6 and m["n_train"] == 20
    assert m["n_found_margin"] + m["n_found_off_margin"] == 6
    assert m["n_margin"] + m["n_off_margin"] == 20
    assert (rec / "fig_toy.png").is_file()
