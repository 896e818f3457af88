"""Run directories: the one force / resume rule every stage follows, atomic writes, config round trips."""

from __future__ import annotations

import pytest

from kktrecon.errors import ConfigError, RunDirectoryExistsError, RunStateError
from kktrecon.runs import RunKind, check_resumable, open_run

KIND = RunKind(manifest="done.json", state="state.bin", outputs=("out.bin",))


def _touch(path, *names) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        (path / name).write_text("x")


def test_new_and_unrelated_directories_start_a_new_run(tmp_path) -> None:
    assert open_run(tmp_path / "fresh", KIND).status == "new"
    _touch(tmp_path / "other", "notes.txt")
    assert open_run(tmp_path / "other", KIND).status == "new"
    assert (tmp_path / "other" / "notes.txt").exists()


def test_a_run_is_refused_without_a_flag_and_found_with_resume(tmp_path) -> None:
    _touch(tmp_path / "f", "done.json", "state.bin", "out.bin")
    _touch(tmp_path / "u", "state.bin")
    with pytest.raises(RunDirectoryExistsError, match=r"finished run.*--resume.*--force"):
        open_run(tmp_path / "f", KIND)
    with pytest.raises(RunDirectoryExistsError, match=r"unfinished run.*--resume"):
        open_run(tmp_path / "u", KIND)
    assert open_run(tmp_path / "f", KIND, resume=True).status == "finished"
    assert open_run(tmp_path / "u", KIND, resume=True).status == "unfinished"


def test_force_deletes_the_runs_own_files_and_nothing_else(tmp_path) -> None:
    _touch(tmp_path / "f", "done.json", "state.bin", "out.bin", "notes.txt")
    assert open_run(tmp_path / "f", KIND, force=True).status == "new"
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["notes.txt"]
    with pytest.raises(ConfigError, match="at most one"):
        open_run(tmp_path / "f", KIND, force=True, resume=True)


def test_force_removes_the_folders_a_kind_owns_and_leaves_the_users(tmp_path) -> None:
    kind = RunKind(manifest="done.json", state="state.json", dirs=("trials", "pool"), what="sweep")
    _touch(tmp_path / "s", "state.json", "model.pt")
    _touch(tmp_path / "s" / "trials" / "0000", "checkpoint.safetensors")
    _touch(tmp_path / "s" / "pool", "candidates.safetensors")
    _touch(tmp_path / "s" / "train", "0.png")
    with pytest.raises(RunDirectoryExistsError, match=r"unfinished sweep \(state.json exists\).*--force"):
        open_run(tmp_path / "s", kind)
    assert open_run(tmp_path / "s", kind, force=True).status == "new"
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["model.pt", "train"]
    assert (tmp_path / "s" / "train" / "0.png").exists()


def test_every_command_declares_what_it_owns() -> None:
    from kktrecon.attack.loop import ATTACK_RUN
    from kktrecon.auditing import AUDIT_RUN
    from kktrecon.demo import DEMO_RUN
    from kktrecon.experiments.runner import EXPERIMENT_RUN
    from kktrecon.sweeps.config import SWEEP_RUN
    from kktrecon.training import VICTIM_RUN

    kinds = [VICTIM_RUN, ATTACK_RUN, SWEEP_RUN, AUDIT_RUN, EXPERIMENT_RUN, DEMO_RUN]
    assert all(isinstance(k, RunKind) for k in kinds)
    assert "pool" in SWEEP_RUN.dirs  # a forced sweep leaves no stale pool behind
    assert all("." not in d and "/" not in d for k in kinds for d in k.dirs)  # never the directory itself


def test_resume_check_names_every_differing_key() -> None:
    check_resumable({"a": 1, "n": 5}, {"a": 1, "n": 9}, where="d", free=("n",))
    with pytest.raises(RunStateError, match=r"differs in \['a', 'b'\] \(then \[1, None\], now \[2, 3\]\)"):
        check_resumable({"a": 1, "n": 5}, {"a": 2, "b": 3, "n": 5}, where="d", free=("n",))


def test_force_removes_nothing_where_no_run_of_its_kind_left_its_mark(tmp_path) -> None:
    kind = RunKind(manifest="audit.html", state="audit.json", outputs=("notes.md",), dirs=("evaluation",))
    _touch(tmp_path / "project", "model.pt", "notes.md")  # notes.md: a user's file that bears a name the kind writes
    _touch(tmp_path / "project" / "evaluation", "my-notes.txt")
    _touch(tmp_path, "parent-notes.txt")
    run = open_run(tmp_path / "project", kind, force=True)
    assert run.status == "new"
    assert sorted(p.name for p in (tmp_path / "project").iterdir()) == ["evaluation", "model.pt", "notes.md"]
    assert (tmp_path / "project" / "evaluation" / "my-notes.txt").exists() and (tmp_path / "parent-notes.txt").exists()


def test_a_run_directory_in_use_by_another_process_is_refused(tmp_path) -> None:
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from kktrecon.runs import RunKind, open_run; "
         "r = open_run(sys.argv[1], RunKind('done.json', 'state.bin')); print('held', flush=True); time.sleep(60)",
         str(tmp_path / "busy")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunStateError, match="in use by another kktrecon process"):
            open_run(tmp_path / "busy", KIND)
    finally:
        holder.kill()
        holder.wait()
    assert open_run(tmp_path / "busy", KIND).status == "new"  # released with its process
    first = open_run(tmp_path / "mine", KIND)
    assert open_run(tmp_path / "mine", KIND).status == "new" and first.lock is not None  # this process shares it
