"""The 2-D toy's score: points found on and off the margin."""

from __future__ import annotations

import math

import pytest
import torch

from kktrecon.evaluation import (
    evaluate_candidates,
    score_toy,
)


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
