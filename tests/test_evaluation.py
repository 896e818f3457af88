"""Tests for kktrecon.evaluation: matching, scale alignment, SSIM, pooling, the 2-D toy counts.

The pipeline (NCC matching + scale alignment + SSIM) is checked against an independent numpy
implementation written here from the definitions (Gaussian window σ = 1.5, 3 taps, reflect padding).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kktrecon import evaluation
from kktrecon.evaluation import (
    Scores,
    VictimMismatchError,
    align_scale,
    chance_level,
    evaluate,
    evaluate_candidates,
    load_candidates,
    match_nearest,
    ncc_distance,
    score_candidates,
    score_toy,
)

# ----------------------------------------------------------------------------------------------
# Independent oracle (numpy, loops, straight from the definitions)
# ----------------------------------------------------------------------------------------------


def _np_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM map, Gaussian window of 3 taps with sigma 1.5, reflect padding, data range 1."""
    taps = np.exp(-(np.arange(-1, 2) ** 2) / (2 * 1.5**2))
    taps /= taps.sum()
    kernel = np.outer(taps, taps)

    def filt(img: np.ndarray) -> np.ndarray:
        out = np.zeros_like(img)
        for ch in range(img.shape[0]):
            padded = np.pad(img[ch], 1, mode="reflect")
            for dy in range(3):
                for dx in range(3):
                    out[ch] += kernel[dy, dx] * padded[dy : dy + img.shape[1], dx : dx + img.shape[2]]
        return out

    c1, c2 = 0.01**2, 0.03**2
    mu1, mu2 = filt(a), filt(b)
    s11 = filt(a * a) - mu1**2
    s22 = filt(b * b) - mu2**2
    s12 = filt(a * b) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean())


def _np_ncc(a: np.ndarray, b: np.ndarray) -> float:
    def std(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(x.shape[0], -1)
        return ((flat - flat.mean(1, keepdims=True)) / flat.std(1, ddof=1, keepdims=True)).ravel()

    return float(((std(a) - std(b)) ** 2).sum() / a.size)


def _oracle(cands: np.ndarray, train: np.ndarray, mean: np.ndarray) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"match": [], "ncc": [], "ssim_reference": [], "ssim_aligned": [], "psnr": []}
    for x in train:
        dists = [_np_ncc(x, c) for c in cands]
        j = int(np.argmin(dists))
        c = cands[j]
        target = x + mean
        ref = c + mean
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        scale = max(0.0, float((c * x).sum() / (c * c).sum()))
        aligned = np.clip(scale * c + mean, 0, 1)
        out["match"].append(j)
        out["ncc"].append(dists[j])
        out["ssim_reference"].append(_np_ssim(ref, target))
        out["ssim_aligned"].append(_np_ssim(aligned, target))
        out["psnr"].append(-10 * math.log10(((aligned - target) ** 2).mean()))
    return out


def _images(n: int, shape: tuple[int, ...] = (1, 12, 12), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n random images in [0, 1] whose min is 0 and max is 1; returns (mean-subtracted, mean)."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, *shape, generator=g, dtype=torch.float64)
    flat = imgs.view(n, -1)
    flat[:, 0] = 0.0
    flat[:, 1] = 1.0
    mean = imgs.mean(0)
    return imgs - mean, mean


# ----------------------------------------------------------------------------------------------
# Core
# ----------------------------------------------------------------------------------------------


def test_exact_copies_score_one() -> None:
    train, mean = _images(6)
    s = score_candidates(train.clone(), train, mean)
    assert s.match.tolist() == list(range(6))
    torch.testing.assert_close(s.ssim_aligned, torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.ssim_reference, torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.scale, torch.ones(6, dtype=torch.float64))
    assert torch.all(s.psnr == 100.0)  # capped, not inf


@pytest.mark.parametrize("shape", [(1, 10, 10), (3, 8, 8)])
def test_pipeline_agrees_with_independent_oracle(shape: tuple[int, ...]) -> None:
    train, mean = _images(5, shape, seed=1)
    g = torch.Generator().manual_seed(2)
    scales = torch.tensor([0.05, 0.3, 1.0, 2.0, 7.0], dtype=torch.float64).view(-1, 1, 1, 1)
    noisy = scales * (train + 0.15 * torch.randn(train.shape, generator=g, dtype=torch.float64))
    distractors = 0.2 * torch.randn(7, *shape, generator=g, dtype=torch.float64)
    cands = torch.cat([distractors[:3], noisy, distractors[3:]])
    cands = cands[torch.randperm(len(cands), generator=g)]
    s = score_candidates(cands, train, mean)
    expected = _oracle(cands.numpy(), train.numpy(), mean.numpy())
    assert s.match.tolist() == expected["match"]
    for key in ("ncc", "ssim_reference", "ssim_aligned", "psnr"):
        np.testing.assert_allclose(getattr(s, key).numpy(), expected[key], atol=1e-9, err_msg=key)
    # The oracle is not trivially satisfied: noisy candidates at the wrong scale score well below 1.
    assert float(s.ssim_aligned.max()) < 0.99


@pytest.mark.parametrize("best_buddies", [False, True])
def test_shuffling_candidates_only_permutes_matches(best_buddies: bool) -> None:
    train, mean = _images(8, seed=3)
    g = torch.Generator().manual_seed(4)
    cands = torch.cat([train[:5] + 0.3 * torch.randn(5, 1, 12, 12, generator=g, dtype=torch.float64)])
    cands = torch.cat([cands, 0.3 * torch.randn(6, 1, 12, 12, generator=g, dtype=torch.float64)])
    perm = torch.randperm(len(cands), generator=g)
    a = score_candidates(cands, train, mean, best_buddies=best_buddies)
    b = score_candidates(cands[perm], train, mean, best_buddies=best_buddies)
    for key in ("ssim_reference", "ssim_aligned", "psnr", "ncc", "scale"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key), equal_nan=True, msg=key)
    matched = b.match >= 0
    assert torch.equal(matched, a.match >= 0)
    assert torch.equal(perm[b.match[matched]], a.match[matched])


def test_best_buddies_never_reuses_a_candidate() -> None:
    train, mean = _images(3, seed=5)
    g = torch.Generator().manual_seed(6)
    # Images 0 and 1 are near copies, so one candidate is the nearest of both.
    train[1] = train[0] + 0.02 * torch.randn(train[0].shape, generator=g, dtype=torch.float64)
    cands = torch.stack([train[0], train[2] + 0.05])
    plain = score_candidates(cands, train, mean)
    assert plain.match.tolist() == [0, 0, 1]  # without best buddies a candidate serves two images
    bb = score_candidates(cands, train, mean, best_buddies=True)
    assert bb.match.tolist() == [0, -1, 1]
    assert bb.ssim_aligned[1] == 0 and bb.ssim_reference[1] == 0
    assert math.isnan(float(bb.psnr[1])) and math.isnan(float(bb.ncc[1]))
    assert torch.all(bb.aligned[1] == 0)


def test_best_buddies_matches_are_unique_on_random_sets() -> None:
    g = torch.Generator().manual_seed(7)
    dist = torch.rand(40, 15, generator=g)
    plain = match_nearest(dist)
    assert len(set(plain.tolist())) < 40  # 40 rows, 15 columns: duplicates are forced
    bb = match_nearest(dist, best_buddies=True)
    used = bb[bb >= 0].tolist()
    assert len(used) == len(set(used)) and len(used) > 0
    for i, j in enumerate(bb.tolist()):
        if j >= 0:
            assert int(dist[:, j].argmin()) == i and int(dist[i].argmin()) == j


def test_alignment_never_flips_sign_and_is_scale_invariant() -> None:
    train, mean = _images(4, seed=8)
    assert torch.all(align_scale(-train, train) == 0)
    for i in range(4):  # one candidate each, so that the sign-flipped copy is the match
        flipped = score_candidates(-train[i : i + 1], train[i : i + 1], mean)
        assert flipped.match.tolist() == [0] and float(flipped.scale[0]) == 0.0
        torch.testing.assert_close(flipped.aligned[0], mean.clamp(0, 1))
        assert float(flipped.ssim_aligned[0]) < 0.5

    small = score_candidates(0.1 * train, train, mean)
    torch.testing.assert_close(small.scale, torch.full((4,), 10.0, dtype=torch.float64))
    torch.testing.assert_close(small.ssim_aligned, torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.all(align_scale(torch.zeros_like(train), train) == 0)  # no division by zero


def test_chance_level_never_matches_an_image_to_itself() -> None:
    train, mean = _images(6, seed=15)
    g = torch.Generator().manual_seed(16)
    train[3] = 0.5 * train[0] + 0.01 * torch.randn(train[0].shape, generator=g, dtype=torch.float64)
    base = chance_level(train, mean)
    assert all(int(j) != i for i, j in enumerate(base.match))
    assert int(base.match[0]) == 3 and int(base.match[3]) == 0
    assert float(base.ssim_aligned[0]) > 0.9 > float(base.ssim_aligned[1])
    r = evaluate_candidates(train, train, torch.tensor([0, 1] * 3), mean, outputs=torch.ones(6))
    assert r.metrics["chance_median_ssim_aligned"] == pytest.approx(float(base.ssim_aligned.median()))
    with pytest.raises(ValueError, match="at least two training images"):
        chance_level(train[:1], mean)


def test_ncc_matching_picks_the_right_candidate_among_distractors() -> None:
    train, mean = _images(6, seed=9)
    g = torch.Generator().manual_seed(10)
    # Positive affine copies (contrast and brightness changed) fool L2 but not NCC.
    gains = torch.tensor([0.2, 3.0, 0.5, 5.0, 0.1, 1.5], dtype=torch.float64).view(-1, 1, 1, 1)
    copies = gains * train + torch.linspace(-2, 2, 6, dtype=torch.float64).view(-1, 1, 1, 1)
    distractors = 0.3 * torch.randn(20, 1, 12, 12, generator=g, dtype=torch.float64)
    cands = torch.cat([distractors, copies])
    perm = torch.randperm(len(cands), generator=g)
    s = score_candidates(cands[perm], train, mean)
    assert perm[s.match].tolist() == list(range(20, 26))
    torch.testing.assert_close(s.ncc, torch.zeros(6, dtype=torch.float64), atol=1e-9, rtol=0)
    l2 = torch.cdist(train.flatten(1), cands[perm].flatten(1)).argmin(1)
    assert perm[l2].tolist() != list(range(20, 26))


def test_cifar_shape_with_downsampling() -> None:
    train, mean = _images(5, (3, 32, 32), seed=11)
    g = torch.Generator().manual_seed(12)
    cands = torch.cat([0.2 * torch.randn(10, 3, 32, 32, generator=g, dtype=torch.float64), 0.5 * train + 0.01])
    s = score_candidates(cands, train, mean, downsample=2)
    assert s.match.tolist() == list(range(10, 15))
    assert s.aligned.shape == (5, 3, 32, 32)  # scoring at full resolution
    assert torch.all(s.ssim_aligned > 0.99)
    # The distance is taken after 2x bicubic downsampling, not at full resolution.
    d2 = ncc_distance(train, cands, downsample=2)
    small = torch.nn.functional.interpolate
    manual = ncc_distance(
        small(train, scale_factor=0.5, mode="bicubic"), small(cands, scale_factor=0.5, mode="bicubic")
    )
    torch.testing.assert_close(d2, manual)
    assert not torch.allclose(d2, ncc_distance(train, cands))


def test_score_candidates_rejects_bad_input() -> None:
    train, mean = _images(3)
    with pytest.raises(ValueError, match="training images' shape"):
        score_candidates(torch.zeros(2, 1, 8, 8, dtype=torch.float64), train, mean)
    with pytest.raises(ValueError, match="at least one candidate"):
        score_candidates(train[:0], train, mean)
    with pytest.raises(ValueError, match=r"`mean` of shape"):
        score_candidates(train, train, mean[0])
    with pytest.raises(ValueError, match=r"`downsample` to be a positive integer"):
        score_candidates(train, train, mean, downsample=0)
    with pytest.raises(ValueError, match=r"C in \(1, 3\)"):
        score_candidates(torch.zeros(2, 2, 8, 8), torch.zeros(2, 2, 8, 8), torch.zeros(2, 8, 8))


# ----------------------------------------------------------------------------------------------
# In-memory evaluation
# ----------------------------------------------------------------------------------------------


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


def test_toy_counts_on_and_off_margin() -> None:
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
    labels = torch.tensor([1, 1, 0, 0, 1, 0])
    signs = 2.0 * labels - 1.0
    margins = torch.tensor([1.0, 1.08, 1.5, 2.0, 1.0, 3.0])  # on the margin (tol 0.1): 0, 1, 4
    cands = torch.tensor([[0.01, 0.0], [0.0, 1.02], [-1.0, 0.2], [5.0, 5.0]])  # finds 0 and 2 only
    r = evaluate_candidates(
        cands, points, labels, torch.zeros(2), outputs=signs * margins, toy_radius=0.05, margin_tol=0.1
    )
    m = r.metrics
    assert m["kind"] == "toy" and "ssim_threshold" not in m
    assert (m["n_found"], m["n_margin"], m["n_found_margin"]) == (2, 3, 1)
    assert (m["n_off_margin"], m["n_found_off_margin"]) == (3, 1)
    assert [row["on_margin"] for row in r.rows] == [True, True, False, False, True, False]
    assert [row["found"] for row in r.rows] == [True, False, True, False, False, False]
    assert r.rows[3]["distance"] == pytest.approx(0.2)
    assert "ssim_aligned" not in r.rows[0]
    tight = evaluate_candidates(cands, points, labels, torch.zeros(2), outputs=signs * margins, margin_tol=0.05)
    assert tight.metrics["n_margin"] == 2


def test_score_toy_best_buddies() -> None:
    s = score_toy(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.1, 0.0], [0.3, 0.0]]), best_buddies=True)
    assert s.match.tolist() == [0, -1] and math.isinf(float(s.distance[1]))


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
    )
    victim = evaluation._Victim(model=model, manifest=manifest, dataset=dataset, downsample=1)
    loaded: list[Path] = []

    def load(path: Path, *, data_root: object, device: torch.device) -> evaluation._Victim:
        loaded.append(path)
        return victim

    monkeypatch.setattr(evaluation, "_load_victim", load)
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


def test_scores_is_a_dataclass_of_tensors() -> None:
    train, mean = _images(2)
    s = score_candidates(train, train, mean)
    assert isinstance(s, Scores)
    assert s.match.dtype == torch.int64 and s.ssim_aligned.dtype == torch.float64


# ----------------------------------------------------------------------------------------------
# End to end with real victims written by kktrecon.models (toy and the embedded MNIST sample)
# ----------------------------------------------------------------------------------------------


def _real_victim(tmp_path: Path, data_config: object, input_shape: tuple[int, ...], data_root: object) -> Path:
    from kktrecon.data import load_dataset
    from kktrecon.models import ModelConfig, build_model, save_checkpoint
    from kktrecon.runs import config_to_dict

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
    assert f"{m['n_reconstructed']} of 8 training images reconstructed" in page and "init_scale" in page
    assert "Chance level" in page


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
