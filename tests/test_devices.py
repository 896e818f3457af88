"""Device, dtype and CPU-thread choices."""

from __future__ import annotations

import time

import pytest
import torch

from kktrecon.devices import THREADS_ENV, ThreadChoice, cpu_threads, pick_threads, resolve_device, resolve_dtype
from kktrecon.errors import ConfigError

CPU = torch.device("cpu")


def test_names_resolve_and_unknown_ones_list_the_choices() -> None:
    assert resolve_dtype("float64") is torch.float64 and resolve_device("cpu") == CPU
    with pytest.raises(ConfigError, match="float32"):
        resolve_dtype("float16")
    with pytest.raises(ConfigError, match="auto, cpu"):
        resolve_device("tpu")


def _step_slower_with(threads_penalised: int, seconds: float = 0.004):
    """A step that takes ``seconds`` longer whenever torch runs with ``threads_penalised`` threads."""
    return lambda: time.sleep(seconds if torch.get_num_threads() == threads_penalised else 0.0)


def test_one_thread_is_taken_only_where_it_is_clearly_faster(monkeypatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    default = torch.get_num_threads()
    if default == 1:
        pytest.skip("one CPU thread: nothing to choose")
    assert pick_threads(_step_slower_with(default), CPU) == 1  # the shared-machine case
    assert pick_threads(_step_slower_with(1), CPU) == default
    assert pick_threads(lambda: time.sleep(0.001), CPU) == default  # a tie keeps torch's default
    assert torch.get_num_threads() == default  # probing leaves the process as it found it
    assert pick_threads(lambda: None, torch.device("meta")) is None  # off the CPU: untouched


def test_the_thread_count_can_be_pinned_and_bad_pins_are_refused(monkeypatch) -> None:
    calls = []
    monkeypatch.setenv(THREADS_ENV, "1")
    assert pick_threads(lambda: calls.append(1), CPU) == 1 and not calls  # pinned: nothing timed
    monkeypatch.setenv(THREADS_ENV, "two")
    with pytest.raises(ConfigError, match=f"{THREADS_ENV}.*'two'"):
        pick_threads(lambda: None, CPU)


def test_cpu_threads_restores_the_count_even_on_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), cpu_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == before


def test_a_long_loop_re_times_its_threads_when_due(monkeypatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    default = torch.get_num_threads()
    if default == 1:
        pytest.skip("one CPU thread: nothing to choose")
    now = {"t": 0.0}
    neighbour = {"busy": False}  # a process that starts beside the loop makes the default count slow
    step = lambda: time.sleep(0.005 if neighbour["busy"] and torch.get_num_threads() == default else 0.001)  # noqa: E731
    with ThreadChoice(step, CPU, every_s=60.0, clock=lambda: now["t"]) as choice:
        assert choice.current == default and torch.get_num_threads() == default
        neighbour["busy"] = True
        now["t"] = 30.0
        choice.tick()
        assert choice.current == default  # not due yet: no timing at all
        now["t"] = 61.0
        choice.tick()
        assert choice.current == 1 and torch.get_num_threads() == 1 and choice.changes == [default, 1]
    assert torch.get_num_threads() == default  # restored on exit
    monkeypatch.setenv(THREADS_ENV, "1")
    pinned = ThreadChoice(lambda: None, CPU, clock=lambda: now["t"])
    now["t"] = 1e9
    pinned.tick()
    assert pinned.fixed and pinned.current == 1 and pinned.changes == [1]


def test_a_step_is_timed_per_call_over_blocks() -> None:
    from kktrecon.devices import step_seconds

    calls = []
    seconds = step_seconds(lambda: (calls.append(1), time.sleep(0.002)), repeats=3)
    assert 0.0019 < seconds < 0.01 and len(calls) > 3 * 5  # blocks of ≥ 20 ms, not single calls
