"""Clean stops: SIGTERM/SIGINT raise `Stopped` in a stage, never between removing an output and renaming its
replacement in; handlers are restored afterwards; a relaunched stage passes the stop on to its launcher.
(The attack table runs the stages themselves: tests/test_attacks.py, "clean stops".)"""
import os
import signal
import sys
import textwrap
import threading
import time
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


def test_handlers_are_restored_and_an_ignored_sigint_stays_ignored():
    before = {each: signal.getsignal(each) for each in (signal.SIGTERM, signal.SIGXFSZ)}
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's SIGINT
    try:
        with stop_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert callable(signal.getsignal(signal.SIGTERM))
            assert signal.getsignal(signal.SIGXFSZ) is signal.SIG_IGN  # EFBIG instead of death over `ulimit -f`
        assert {each: signal.getsignal(each) for each in before} == before
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
