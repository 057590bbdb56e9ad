"""Progress when the output is not a terminal: the bar is hidden, plain lines keep coming."""

from __future__ import annotations

from vitdsi.log import progress


def test_hidden_progress_prints_plain_lines(monkeypatch, capsys):
    monkeypatch.delenv("VITDSI_PROGRESS", raising=False)
    monkeypatch.setenv("VITDSI_PROGRESS_EVERY", "0")  # every update (30 s by default)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    with progress() as bar:
        task = bar.add_task("dsi index", total=300)
        bar.update(task, advance=1, description="dsi index loss 0.412 IA@1 0.530")
    err = capsys.readouterr().err
    assert "progress: dsi index loss 0.412 IA@1 0.530 - 1/300 after 0:00" in err


def test_a_step_longer_than_the_interval_still_prints_lines(monkeypatch, capsys):
    """No update for several intervals (a long epoch): the ticker prints the task as it stands, and
    stops when the progress closes."""
    import time

    monkeypatch.delenv("VITDSI_PROGRESS", raising=False)
    monkeypatch.setenv("VITDSI_PROGRESS_EVERY", "0.2")
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    with progress() as bar:
        task = bar.add_task("dsi index loss 9.843", total=40)
        bar.update(task, completed=3)
        done = bar.add_task("features", total=1)
        bar.advance(done)
        time.sleep(1.0)
    ticked = [line for line in capsys.readouterr().err.splitlines() if line.startswith("progress:")]
    assert len(ticked) >= 2
    assert all(line.startswith("progress: dsi index loss 9.843 - 3/40") for line in ticked)
    time.sleep(0.5)
    assert "progress:" not in capsys.readouterr().err  # the ticker ended with the progress


def test_progress_lines_are_rate_limited_and_silenced(monkeypatch, capsys):
    monkeypatch.delenv("VITDSI_PROGRESS", raising=False)
    monkeypatch.delenv("VITDSI_PROGRESS_EVERY", raising=False)  # default: 30 s
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    with progress() as bar:
        task = bar.add_task("decoding", total=10)
        for _ in range(10):
            bar.advance(task)
    assert "progress:" not in capsys.readouterr().err  # well under 30 s
    monkeypatch.setenv("VITDSI_PROGRESS", "0")
    monkeypatch.setenv("VITDSI_PROGRESS_EVERY", "0")
    with progress() as bar:
        task = bar.add_task("decoding", total=10)
        bar.advance(task)
    assert "progress:" not in capsys.readouterr().err


def test_ctrl_c_sets_a_flag_that_a_progress_step_acts_on():
    import os
    import signal

    import pytest

    from vitdsi import interrupt

    before = signal.getsignal(signal.SIGINT)
    with interrupt.deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)  # no exception here: the handler only sets the flag
        assert interrupt.requested()
        with pytest.raises(KeyboardInterrupt), progress() as bar:
            task = bar.add_task("dsi index", total=3)
            bar.advance(task)
        assert not interrupt.requested()  # delivered once; the cleanup may pass safe points
        interrupt.check()
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):  # a second signal before a safe point: at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before and not interrupt.requested()


def test_ctrl_c_inside_a_garbage_collection_callback_is_not_lost():
    """A KeyboardInterrupt raised in a gc callback is printed and dropped by Python; the flag
    outlives the callback and stops the work at the next safe point."""
    import gc
    import os
    import signal

    import pytest

    from vitdsi import interrupt

    def callback(phase, info):
        if phase == "start":
            os.kill(os.getpid(), signal.SIGINT)

    with interrupt.deferred_interrupts():
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
