"""The verdict: recovered against training ∪ held-out, controls on real data, and the chance level."""

from __future__ import annotations

import pytest
import torch

from kktrecon.data import DATASETS, load_dataset
from kktrecon.evaluation import (
    chance_level,
    evaluate_candidates,
)
from tests.evaluation.helpers import _images


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


# --- the recovered criterion: controls on real data ---------------------------------------------------


def _task(data_root, dataset: str, task: str):
    from kktrecon.evaluation.pipeline import held_out_pool

    ds = load_dataset(dataset=dataset, task=task, n_per_class=10, test_per_class=100, data_root=data_root,
                      dtype=torch.float64)  # fmt: skip
    held_out, source = held_out_pool(ds, None)
    return ds, held_out, source, DATASETS[dataset].match_downsample


def _evaluate(cands, ds, held_out, source, downsample, **config):
    return evaluate_candidates(
        cands, ds.x_train, ds.y_train, ds.mean, outputs=torch.ones(len(ds.x_train)), downsample=downsample,
        held_out=held_out, held_out_source=source, **config,
    ).metrics  # fmt: skip


@pytest.mark.parametrize(("dataset", "task"), [("mnist", "odd-even"), ("cifar10", "vehicles-animals")])
def test_held_out_images_as_candidates_recover_nothing(data_root, dataset, task) -> None:
    ds, held_out, source, downsample = _task(data_root, dataset, task)
    assert len(held_out) == 200 and "test split" in source
    m = _evaluate(held_out, ds, held_out, source, downsample)
    assert m["n_recovered"] == 0
    assert m["held_out"] == {"count": 200, "source": source}
    # The control can fail: judged by SSIM alone (no pool), some of these never-seen images do count.
    loose = _evaluate(held_out, ds, held_out[:0], source, downsample)
    assert loose["n_recovered"] is None and loose["n_reconstructed"] >= (20 if dataset == "mnist" else 1)


@pytest.mark.parametrize(("dataset", "task"), [("mnist", "odd-even"), ("cifar10", "vehicles-animals")])
def test_training_images_as_candidates_are_all_recovered(data_root, dataset, task) -> None:
    ds, held_out, source, downsample = _task(data_root, dataset, task)
    m = _evaluate(ds.x_train, ds, held_out, source, downsample)
    assert m["n_recovered"] == 20 and m["median_distance_ratio"] == 0.0
    # ... and a criterion tightened past the truth (SSIM must exceed 1) recovers none: the count is not fixed.
    assert _evaluate(ds.x_train, ds, held_out, source, downsample, threshold=1.0)["n_recovered"] == 0


def test_a_look_alike_nearer_to_a_held_out_image_does_not_count() -> None:
    train, mean = _images(4, seed=30)
    held = _images(3, seed=31)[0]
    g = torch.Generator().manual_seed(32)
    near_train = train[1] + 0.05 * torch.randn(train[1].shape, generator=g, dtype=torch.float64)
    near_held = held[2] + 0.05 * torch.randn(held[2].shape, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    r = evaluate_candidates(torch.stack([near_train, near_held]), train, labels, mean, outputs=torch.ones(4),
                            held_out=held)  # fmt: skip
    assert r.verdict.recovered.tolist() == [False, True, False, False]
    assert int(r.verdict.candidate[1]) == 0
    assert r.metrics["n_recovered"] == 1
    without_pool = evaluate_candidates(torch.stack([near_train, near_held]), train, labels, mean,
                                       outputs=torch.ones(4))  # fmt: skip
    assert without_pool.metrics["n_recovered"] is None  # no pool, no verdict: look-alikes cannot be told apart


def test_the_control_is_the_same_verdict_on_images_the_victim_never_saw(data_root) -> None:
    from kktrecon.evaluation.pipeline import control_images

    ds, held_out, source, downsample = _task(data_root, "mnist", "odd-even")
    control, control_source = control_images(ds, held_out, 320, data_root=data_root)
    assert len(control) == 320 and "outside the held-out pool" in control_source
    assert torch.cdist(control.flatten(1), held_out.flatten(1)).min() > 0  # none of them is in the pool
    assert torch.cdist(control.flatten(1), ds.x_train.flatten(1)).min() > 0  # nor in the training set

    def judged(cands, ctrl):
        return evaluate_candidates(
            cands, ds.x_train, ds.y_train, ds.mean, outputs=torch.ones(20), downsample=downsample,
            held_out=held_out, held_out_source=source, control=ctrl, control_source=control_source,
        ).metrics  # fmt: skip

    # The control applies the verdict itself: given the candidates as control, it counts what they count.
    same = judged(ds.x_train, ds.x_train)
    assert same["control"]["n_recovered"] == same["n_recovered"] == 20
    # Unseen digits are nearer to some training digit than to the pool by chance, more so the more there are:
    # the count a result must beat grows with the candidates (the first m of the control are used).
    few, many = judged(control[:40], control), judged(control, control)
    assert few["control"]["count"] == 40 and many["control"]["count"] == 320
    assert few["control"]["n_recovered"] == few["n_recovered"]
    assert 0 < few["control"]["n_recovered"] < many["control"]["n_recovered"]
    assert judged(held_out, held_out)["control"]["n_recovered"] == 0  # the pool's own images never count


def test_a_left_out_control_is_the_pool_judging_its_own_images_without_their_copies(data_root) -> None:
    # An audit has no images outside the held-out pool: its control leaves each of the first ones out in turn.
    from kktrecon.evaluation.pipeline import control_images
    from kktrecon.evaluation.verdict import control_metrics

    ds, held_out, _, downsample = _task(data_root, "mnist", "odd-even")
    control, _ = control_images(ds, held_out, 40, data_root=data_root)

    def count(ctrl, pool, left_out):
        return control_metrics(ctrl, ds.x_train, pool, ds.mean, threshold=0.4, downsample=downsample,
                               source="test", left_out=left_out)["n_recovered"]  # fmt: skip

    # Oracle: one image left out of a pool that holds it is that image judged against the pool without it.
    counts = []
    for i in range(12):
        one = control[i : i + 1]
        counts.append(count(one, held_out, False))
        assert count(one, torch.cat([one, held_out]), True) == counts[-1]
    assert 0 < sum(counts) < 12  # the oracle compares both outcomes
    pooled = torch.cat([control, held_out])
    assert count(control, pooled, False) == 0  # not left out, a pool's own image is its own nearest
    assert count(control, pooled, True) > 0
    # A prefix of the control recovers what the same prefix judged alone recovers (read off one judgement).
    full = control_metrics(control, ds.x_train, pooled, ds.mean, threshold=0.4, downsample=downsample,
                           source="test", left_out=True, at=(10, 25, 40))  # fmt: skip
    assert full["n_recovered_at"][40] == full["n_recovered"]
    for m in (10, 25):
        assert full["n_recovered_at"][m] == count(control[:m], pooled, True)
    with pytest.raises(ValueError, match="first images of held_out"):
        count(control, held_out, True)
