"""The figures: capped grids, nothing leaked into pyplot, loss curves."""

from __future__ import annotations

from pathlib import Path

from kktrecon.reporting import plot_loss_history, plot_pairs, save_figures
from tests.reporting.helpers import _image_result


def test_pairs_grid_is_capped(tmp_path: Path) -> None:
    result = _image_result(n=130, seed=1)
    fig = plot_pairs(result, max_pairs=100)
    assert "best 100 of 130" in fig.axes[0].get_title()
    assert len(fig.axes[0].texts) == 100


def test_figures_do_not_leak_into_pyplot(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    written = save_figures(_image_result(), tmp_path)
    assert set(written) == {"fig_pairs.png", "fig_ssim_vs_output.png"}
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written.values())
    assert plt.get_fignums() == before


def test_loss_history_needs_numbers() -> None:
    assert plot_loss_history([]) is None
    assert plot_loss_history([{"phase": "x"}]) is None
    assert plot_loss_history([{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]) is not None
