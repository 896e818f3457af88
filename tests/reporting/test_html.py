"""The self-contained HTML report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from kktrecon.evaluation import evaluate_candidates
from kktrecon.pipelines import write_evaluation
from kktrecon.reporting import report
from kktrecon.reporting.html import write_audit_report
from tests.reporting.helpers import _evaluated_dir


def test_report_embeds_figures_and_references_no_files(tmp_path: Path) -> None:
    rec = _evaluated_dir(tmp_path)
    path = report(rec)
    assert path == rec / "report.html"
    page = path.read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3  # pairs grid, scatter, loss history
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "href=" not in page and "<link" not in page and "<script" not in page
    assert "url(" not in page  # no external resources from CSS either


def test_report_headline_comes_first_and_names_both_metrics(tmp_path: Path) -> None:
    rec = _evaluated_dir(tmp_path)
    page = report(rec).read_text(encoding="utf-8")
    metrics = json.loads((rec / "metrics.json").read_text())
    headline = f"{metrics['n_reconstructed']} of 6 training images with SSIM &gt; 0.4 (no held-out pool)"
    assert headline in page
    assert f"the paper&#x27;s min-max protocol: {metrics['n_reconstructed_reference']} of 6" in page
    assert page.index(headline) < page.index("<table")
    assert page.index(headline) < page.index("<th>ssim_aligned</th>")
    # The victim's recipe is shown, its mean image is not.
    assert "widths" in page and "train_error" in page and "train_mean" not in page
    assert "0.03" in page  # reconstruction config


def test_the_per_sample_table_scrolls_in_its_own_box_not_the_page(tmp_path: Path) -> None:
    # A column per measure makes the table wider than a screen; the page itself must not scroll sideways.
    page = report(_evaluated_dir(tmp_path)).read_text(encoding="utf-8")
    wrapped = re.search(r"<div class=wide><table><thead><tr><th>index</th>.*?</table></div>", page, re.S)
    assert wrapped is not None
    assert re.search(r"\.wide \{[^}]*overflow-x: auto", page)


def test_with_a_held_out_pool_the_shaded_rows_are_the_recovered_ones(tmp_path: Path) -> None:
    # Two held-out images are noisy twins of training images and the first two candidates are those twins:
    # their SSIM to the training image stays high, but each is nearest to its held-out twin, not recovered.
    g = torch.Generator().manual_seed(0)
    train = torch.rand(6, 1, 10, 10, generator=g, dtype=torch.float64) - 0.5
    twins = train[:2] + 0.1 * torch.randn(2, 1, 10, 10, generator=g, dtype=torch.float64)
    held_out = torch.cat([twins, torch.rand(4, 1, 10, 10, generator=g, dtype=torch.float64) - 0.5])
    noise = 0.2 * torch.randn(6, 1, 10, 10, generator=g, dtype=torch.float64)
    cands = torch.cat([0.3 * twins, 0.3 * train[2:4], noise])
    labels = torch.arange(6) % 2
    outputs = 2.0 * labels.double() - 1.0
    mean = torch.zeros(1, 10, 10, dtype=torch.float64)
    result = evaluate_candidates(cands, train, labels, mean, outputs=outputs, held_out=held_out)
    write_evaluation(result, tmp_path)
    with pytest.warns(UserWarning):  # evaluated in memory: no victim, no reconstruction manifest
        page = report(tmp_path).read_text(encoding="utf-8")
    recovered = [bool(r["recovered"]) for r in result.rows]
    high = [float(r["ssim_aligned"]) > 0.4 for r in result.rows]
    assert sum(high) > sum(recovered) > 0  # the case where the two shadings differ
    assert page.count("<tr class=ok>") == sum(recovered)
    assert "shaded rows are recovered" in page


def test_report_escapes_text(tmp_path: Path) -> None:
    rec = _evaluated_dir(tmp_path, hostile="<script>alert('x')</script>&")
    page = report(rec, out=tmp_path / "out.html").read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;" in page


def test_report_without_metrics_says_to_evaluate(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run `kktrecon evaluate"):
        report(tmp_path)


def test_report_warns_visibly_when_victim_is_gone(tmp_path: Path) -> None:
    rec = _evaluated_dir(tmp_path)
    (tmp_path / "victim" / "model.json").unlink()
    with pytest.warns(UserWarning, match="model.json was not found"):
        page = report(rec).read_text(encoding="utf-8")
    assert 'class="note"' in page


def test_toy_report(tmp_path: Path) -> None:
    points = torch.tensor([[0.5, 0.5], [-0.5, -0.5], [0.5, -0.6], [-0.4, 0.7]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1, 0])
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).double()
    cands = points[:2] + 0.01
    result = evaluate_candidates(cands, points, labels, torch.zeros(2), model=model, candidate_labels=torch.ones(2))
    assert result.toy_grid is not None
    write_evaluation(result, tmp_path)
    assert (tmp_path / "fig_toy.png").is_file() and not (tmp_path / "fig_pairs.png").exists()
    with pytest.warns(UserWarning):
        page = report(tmp_path).read_text(encoding="utf-8")
    assert "2 of 4 training points found" in page
    assert page.count('src="data:image/png;base64,') == 1


@pytest.mark.parametrize(("given", "count", "warned"), [(True, 10, True), (True, 200, False), (False, 0, False)])
def test_the_audit_report_warns_when_the_held_out_pool_is_weak(tmp_path: Path, given, count, warned) -> None:
    metrics = {"n_train": 10, "n_recovered": 8, "held_out_given": given, "held_out": {"count": count}}
    page = write_audit_report(tmp_path, metrics, {}).read_text(encoding="utf-8")
    assert ("Only 10 held-out images were given" in page) is warned
    assert ("No held-out images were given" in page) is (not given)


@pytest.mark.parametrize(("recovered", "chance", "noted"), [(3, 3, True), (2, 3, True), (4, 3, False), (0, 2, False)])
def test_a_count_at_or_below_the_unseen_control_is_called_chance(tmp_path: Path, recovered, chance, noted) -> None:
    control = {"n_recovered": chance, "count": 40, "placement": "each left out of the held-out pool in turn"}
    metrics = {"n_train": 10, "n_recovered": recovered, "held_out_given": True, "held_out": {"count": 200},
               "control": control, "recovered_files": [f"train/{i}.png" for i in range(recovered)]}  # fmt: skip
    page = write_audit_report(tmp_path, metrics, {}).read_text(encoding="utf-8")
    assert "each left out of the held-out pool in turn, judged as candidates by the same verdict" in page
    assert ("This count is not evidence of a leak" in page) is noted
