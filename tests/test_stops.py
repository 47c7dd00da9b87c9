"""Clean stops: SIGTERM/SIGINT raise `Stopped` in a stage, never between removing an output and renaming its
replacement in; handlers are restored afterwards; a relaunched stage passes the stop on to its launcher.
(The attack table runs the stages themselves: tests/test_attacks.py, "clean stops".)"""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path

import pytest

from dreamdiffusion.core import compute
from dreamdiffusion.core import fileio as dio
from dreamdiffusion.core.cli import Stopped, stop_signals

LAUNCHER = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    signal.signal(signal.SIGTERM, lambda *a: (Path(sys.argv[1]).write_text("SIGTERM"), sys.exit(143)))
    Path(sys.argv[1] + ".ready").touch()
    time.sleep(60)
""")

POOLED = textwrap.dedent("""
    import os, signal, sys, threading, time
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path
    from dreamdiffusion.core.cli import Stopped, stop_signals
    from dreamdiffusion.core.parallel import task_map

    def task(path):
        time.sleep(0.25)
        Path(path).touch()

    if __name__ == "__main__":
        out, name, target, delay = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
        signum = signal.Signals[name]
        signal.signal(signal.SIGINT, signal.default_int_handler)  # (not the SIG_IGN of a background job)
        if target == "pool":  # inside the pool's own code: it has started a worker, not yet its manager thread
            start_manager = ProcessPoolExecutor._start_executor_manager_thread

            def stop_then_start(pool):
                ProcessPoolExecutor._start_executor_manager_thread = start_manager
                os.kill(os.getpid(), signum)
                start_manager(pool)

            ProcessPoolExecutor._start_executor_manager_thread = stop_then_start
        elif target == "kill":  # the stage's process killed outright (SIGKILL, out of memory): no handler runs
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
        else:
            send = (lambda: os.killpg(0, signum)) if target == "group" else (lambda: os.kill(os.getpid(), signum))
            threading.Timer(delay, send).start()
        try:
            with stop_signals(), task_map(2) as run:
                run(task, [out / str(k) for k in range(40)])
        except Stopped as stop:
            print(stop)
            sys.exit(128 + stop.signum)
""")


@pytest.mark.parametrize("name, target, delay", [("SIGTERM", "pool", 0), ("SIGTERM", "process", 1.0),
                                                 ("SIGINT", "group", 1.0)])
def test_a_stop_cancels_the_pooled_tasks_not_started_and_leaves_no_worker(tmp_path, name, target, delay):
    """A stop while worker processes run tasks (inside the pool's own code, as it starts a worker; mid-way, sent
    to the stage or to its whole process group as Ctrl-C is): the stage exits 128 + the signal, the tasks not
    yet started never run, and no worker or fork server outlives it (one would hold the stage's stderr open,
    and the run would hang)."""
    script, out = tmp_path / "pooled.py", tmp_path / "done"
    script.write_text(POOLED)
    out.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(out), name, target, str(delay)], capture_output=True,
                          text=True, timeout=60, start_new_session=True)
    assert proc.returncode == 128 + signal.Signals[name], proc.stderr[-3000:]
    assert proc.stdout.strip() == f"stopped by {name}"
    assert len(list(out.iterdir())) < 40  # 40 tasks of 0.25 s over 2 workers: 5 s unless cancelled


def test_workers_of_a_killed_stage_exit_and_leave_its_output_closed(tmp_path):
    """SIGKILL to a stage mid-way through pooled tasks: its workers notice and exit within seconds, so they
    and the fork server do not keep its stderr open (a caller reading it would wait forever)."""
    script, out = tmp_path / "pooled.py", tmp_path / "done"
    script.write_text(POOLED)
    out.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(out), "SIGKILL", "kill", "1.0"], capture_output=True,
                          text=True, timeout=60, start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert len(list(out.iterdir())) < 40


def test_a_stop_during_an_atomic_rename_waits_until_the_new_output_is_in_place(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    real_replace = os.replace

    def replace_after_a_stop(src, dst):
        signal.raise_signal(signal.SIGTERM)  # the old output is gone, the new one not yet renamed in
        real_replace(src, dst)

    monkeypatch.setattr(dio.os, "replace", replace_after_a_stop)
    with stop_signals(), pytest.raises(Stopped, match="stopped by SIGTERM"):
        with dio.atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / "new").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["new"]


def test_a_stop_just_after_the_temporary_is_made_leaves_no_temporary(tmp_path, monkeypatch):
    real_mkdtemp = dio.tempfile.mkdtemp

    def mkdtemp_then_a_stop(**kwargs):
        made = real_mkdtemp(**kwargs)
        signal.raise_signal(signal.SIGTERM)  # the folder exists, atomic_path does not hold it yet
        # (SIGTERM: a background job inherits an ignored SIGINT, and an ignored SIGINT rightly stays ignored)
        return made

    monkeypatch.setattr(dio.tempfile, "mkdtemp", mkdtemp_then_a_stop)
    with stop_signals(), pytest.raises(Stopped, match="stopped by SIGTERM"):
        with dio.atomic_path(tmp_path / "raw") as tmp:
            tmp.mkdir()
    assert sorted(tmp_path.iterdir()) == []  # no `.raw.<pid>.*` left behind


def test_a_stop_raised_where_python_drops_exceptions_is_raised_again():
    """A stop whose handler runs inside a weakref callback (which Python runs where an object dies, prints any
    exception of, and drops) is not lost: the stage would otherwise run on to the end and exit 0."""
    class Resource:
        pass

    def on_release(ref):
        signal.raise_signal(signal.SIGTERM)  # the handler runs here, and raises here

    with stop_signals(), pytest.raises(Stopped, match="SIGTERM"):
        resource = Resource()
        ref = weakref.ref(resource, on_release)
        del resource
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the stage goes on working
            time.sleep(0.01)
    assert ref() is None


def test_handlers_are_restored_and_an_ignored_sigint_stays_ignored():
    before = {each: signal.getsignal(each) for each in (signal.SIGTERM, signal.SIGXFSZ)}
    hook = sys.unraisablehook
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's SIGINT
    try:
        with stop_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert callable(signal.getsignal(signal.SIGTERM))
            assert signal.getsignal(signal.SIGXFSZ) is signal.SIG_IGN  # EFBIG instead of death over `ulimit -f`
        assert {each: signal.getsignal(each) for each in before} == before and sys.unraisablehook is hook
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_stopped_relaunch_passes_the_stop_to_its_launcher_and_waits_for_it(tmp_path, monkeypatch):
    marker = tmp_path / "launcher-got"
    monkeypatch.setattr(compute, "launch_command", lambda *args: [sys.executable, "-c", LAUNCHER, str(marker)])
    for name in ("LOCAL_RANK", compute.LAUNCHED_ENV):
        monkeypatch.delenv(name, raising=False)

    def stop_when_launched():
        deadline = time.monotonic() + 60
        while not Path(f"{marker}.ready").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_launched, daemon=True).start()
    with stop_signals(), pytest.raises(Stopped, match="SIGTERM"):
        compute.relaunch(compute.ComputeConfig(processes=2, device="cpu"), "stages/pretrain.py")
    assert marker.read_text() == "SIGTERM"  # written by the launcher before it exited: it was waited for
