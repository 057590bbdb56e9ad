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
