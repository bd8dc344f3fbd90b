"""Only the root shows progress: a bar on a terminal, plain lines (for long epochs) in logs."""

import io

from distbp.observe.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_that_is_cleared_at_the_end():
    out = Terminal()
    bar = Progress(10, "epoch 1/3", "auto", is_root=True, stream=out)
    bar.update(10, 0.5)
    text = out.getvalue()
    assert "epoch 1/3 [" in text and "10/10" in text and "loss 0.5000" in text
    bar.close()
    assert out.getvalue().endswith("\r")


def test_a_log_gets_no_bar_and_no_lines_for_a_short_epoch():
    out = io.StringIO()
    bar = Progress(8, "epoch 1/1", "auto", is_root=True, stream=out)
    for i in range(1, 9):
        bar.update(i, 1.0)
    bar.close()
    assert out.getvalue() == ""


def test_a_log_gets_plain_quarter_lines_for_a_long_epoch(monkeypatch):
    out = io.StringIO()
    bar = Progress(8, "epoch 2/5", "auto", is_root=True, stream=out)
    bar.t0 -= 60  # pretend the epoch has run for a minute
    for i in range(1, 9):
        bar.update(i, 1.0)
    lines = out.getvalue().splitlines()
    assert lines == ["epoch 2/5: 2/8 steps, loss 1.0000", "epoch 2/5: 4/8 steps, loss 1.0000",
                     "epoch 2/5: 6/8 steps, loss 1.0000"]
    assert "\r" not in out.getvalue()


def test_other_ranks_print_nothing():
    out = Terminal()
    bar = Progress(4, "epoch 1/1", "bar", is_root=False, stream=out)
    bar.update(4, 0.1)
    bar.close()
    assert out.getvalue() == ""
