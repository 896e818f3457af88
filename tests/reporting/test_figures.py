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


def test_the_law_is_drawn_per_group_on_a_log_axis_with_the_threshold() -> None:
    import pytest

    from kktrecon.errors import ConfigError
    from kktrecon.reporting.figures import figure_png, plot_law

    rows = [
        {"capacity": {"ratio": r}, "n_recovered": k, "n": 20, "group": g, "label": f"{g} {r}"}
        for r, k, g in [(0.25, 4, "MLP"), (114.0, 17, "MLP"), (0.4, 0, "CNN"), (21.0, 3, "CNN")]
    ]
    fig = plot_law(rows, title="law")
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and len(ax.get_lines()) == 3  # two groups and the p = d·n line
    assert [list(line.get_ydata()) for line in ax.get_lines()[:2]] == [[0.2, 0.85], [0.0, 0.15]]
    assert figure_png(fig)[:4] == b"\x89PNG"
    with pytest.raises(ConfigError):
        plot_law([])
