"""Membership evidence: the ROC summary against brute force, and the row-space residual on a tiny victim."""

from __future__ import annotations

import pytest
import torch

from kktrecon.attack.unmixing import row_space
from kktrecon.errors import ConfigError
from kktrecon.evaluation import membership_metrics, roc_auc, tpr_at_fpr
from tests.attack.test_unmixing import _images, _trained


def _brute_tpr(members: torch.Tensor, others: torch.Tensor, fpr: float) -> float:
    """The best TPR over every threshold whose FPR (strictly above) is at most ``fpr``."""
    best = 0.0
    for t in torch.cat([members, others, torch.tensor([-1e9])]):
        if float((others > t).double().mean()) <= fpr:
            best = max(best, float((members > t).double().mean()))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_roc_summary_equals_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    members = torch.randn(30, generator=g) + 1.5
    others = torch.randn(200, generator=g).round(decimals=1)  # ties
    pairs = [(float(a > b) + 0.5 * float(a == b)) for a in members for b in others]
    assert roc_auc(members, others) == pytest.approx(sum(pairs) / len(pairs))
    assert tpr_at_fpr(members, others, 0.01) == pytest.approx(_brute_tpr(members, others, 0.01))
    assert tpr_at_fpr(members, others, 0.001) is None  # 200 held-out images cannot resolve 0.1 %


def test_row_space_residual_separates_training_from_held_out_images_on_a_tiny_victim() -> None:
    train = _images(n=5, seed=0)
    held = _images(n=100, seed=7)
    victim, _ = _trained(train)
    space = row_space(victim)
    metrics = membership_metrics(-space.residual(train), -space.residual(held), score="minus the residual")
    assert metrics["auc"] == 1.0 and metrics["tpr_at_fpr_0.01"] == 1.0 and metrics["tpr_at_zero_fpr"] == 1.0
    assert metrics["tpr_at_fpr_0.001"] is None and metrics["lowest_resolvable_fpr"] == 0.01
    # a score that knows nothing (the images' brightness) does not separate them
    chance = membership_metrics(train.mean((1, 2, 3)), held.mean((1, 2, 3)), score="brightness")
    assert chance["auc"] < 0.9


def test_empty_or_nan_scores_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least one member"):
        roc_auc(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(ConfigError, match="finite"):
        tpr_at_fpr(torch.tensor([float("nan")]), torch.tensor([1.0]), 0.01)
