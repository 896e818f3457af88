"""Progress in a log: a plain line per interval with rate and time left, and a last line; nothing when disabled."""

from __future__ import annotations

import io

from rich.console import Console

from kktrecon.progress import LogBar, progress_bar


def test_a_log_gets_a_line_per_interval_with_rate_time_left_and_loss_terms() -> None:
    now = [0.0]
    sink = io.StringIO()
    bar = LogBar("reconstruct", total=1000, completed=100, console=Console(file=sink, width=200), every_s=15.0,
                 clock=lambda: now[0])  # fmt: skip
    for _ in range(240):  # 240 iterations in 30 s: 8/s
        now[0] += 0.125
        bar.update(postfix="kkt 3.2 · prior 0.1")
        bar.advance()
    bar.emit(final=True)
    lines = sink.getvalue().splitlines()
    assert len(lines) == 3, lines  # at 15 s, at 30 s, and the last
    assert lines[0] == "reconstruct: 220/1000 · 8/s · 0:15 elapsed, ~1:38 left · kkt 3.2 · prior 0.1"
    assert lines[1].startswith("reconstruct: 340/1000 · 8/s · 0:30 elapsed")
    assert lines[2] == "reconstruct: 340/1000 · 8/s · done in 0:30 · kkt 3.2 · prior 0.1"


def test_a_stage_in_a_log_ends_with_one_line_and_a_disabled_one_prints_nothing(capsys) -> None:
    with progress_bar("train", total=5) as bar:  # pytest's stdout is no terminal
        for _ in range(5):
            bar.advance()
    assert capsys.readouterr().out.startswith("train: 5/5 ·")
    with progress_bar("train", total=5, enabled=False) as bar:
        bar.advance(5)
    assert capsys.readouterr().out == ""
