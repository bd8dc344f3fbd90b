"""Metrics plots: two runs drawn into a PNG; every kind of bad input is a clear error naming the file."""

import importlib.util
import json
import sys

import pytest

from distbp.observe.plot import MetricsError, main, panels, plot_metrics, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAVE_MATPLOTLIB, reason='matplotlib not installed (pip install "distbp[plot]")')


def _record(epoch, loss, test=0.5):
    return {"epoch": epoch, "train_loss": loss, "train_accuracy": 1 - loss / 3, "test_accuracy": test,
            "samples_per_s": 1e4, "compute_s": 1.2, "comm_s": 0.1}


def _regression(epoch, loss, test=True):
    """A regression's record: no accuracy, the held-out loss, RMSE and R² (null without held-out rows)."""
    return {"epoch": epoch, "train_loss": loss, "train_accuracy": None, "test_loss": 1.1 * loss if test else None,
            "test_accuracy": None, "test_rmse": 10 * loss if test else None, "test_r2": 1 - loss if test else None}


def _write(path, records, extra_lines=()):
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def two_runs(tmp_path):
    a = _write(tmp_path / "one_rank.jsonl", [_record(e, 2.0 / (e + 1)) for e in range(5)])
    b = _write(tmp_path / "four_ranks.jsonl", [_record(e, 2.1 / (e + 1), test=None) for e in range(4)])
    return a, b


@needs_matplotlib
def test_two_runs_are_drawn_into_a_png(tmp_path, two_runs):
    out = tmp_path / "curves.png"
    plot_metrics([str(p) for p in two_runs], str(out), labels=["1 rank", "4 ranks"])
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5000


@needs_matplotlib
def test_main_draws_with_file_stem_labels_and_reports_the_output(tmp_path, two_runs, capsys):
    out = tmp_path / "m.png"
    assert main([str(two_runs[0]), str(two_runs[1]), "-o", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert str(out) in capsys.readouterr().out


def test_records_are_sorted_by_epoch_and_a_repeated_epoch_keeps_the_later_line(tmp_path):
    # a run resumed from the checkpoint of epoch 1 writes epochs 2 and 3 again.
    path = _write(tmp_path / "m.jsonl", [_record(0, 3.0), _record(1, 2.0), _record(2, 1.5), _record(3, 1.4),
                                         _record(2, 1.0), _record(3, 0.9)], extra_lines=["", "  "])
    records = read_metrics(path)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert [r["train_loss"] for r in records] == [3.0, 2.0, 1.0, 0.9]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(MetricsError, match="nope.jsonl: no such metrics file"):
        plot_metrics([str(tmp_path / "nope.jsonl")], str(tmp_path / "out.png"))


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_named(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(MetricsError, match="empty.jsonl: empty metrics file"):
        plot_metrics([str(path)], str(tmp_path / "out.png"))


def test_malformed_json_line_names_file_and_line_number(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [_record(0, 1.0), _record(1, 0.5)], extra_lines=['{"epoch": 2, "train_'])
    with pytest.raises(MetricsError, match=r"bad.jsonl, line 3: malformed JSON"):
        plot_metrics([str(path)], str(tmp_path / "out.png"))


def test_missing_keys_are_named_with_file_and_line(tmp_path):
    record = _record(1, 0.5)
    del record["train_loss"], record["train_accuracy"]
    path = _write(tmp_path / "short.jsonl", [_record(0, 1.0), record])
    with pytest.raises(MetricsError, match=r"short.jsonl, line 2: missing key\(s\) train_loss, train_accuracy"):
        read_metrics(path)


@pytest.mark.parametrize("line, message", [
    ('[1, 2, 3]', "expected a JSON object"),
    ('{"epoch": "3", "train_loss": 1, "train_accuracy": 0.5}', "epoch must be a non-negative integer"),
    ('{"epoch": 3, "train_loss": "low", "train_accuracy": 0.5}', "train_loss must be a number"),
    ('{"epoch": 3, "train_loss": 1, "train_accuracy": true}', "train_accuracy must be a number"),
    ('{"epoch": 3, "train_loss": 1, "train_accuracy": 0.5, "test_accuracy": "n/a"}', "test_accuracy must be a number or null"),
])
def test_wrong_value_types_are_named(tmp_path, line, message):
    path = _write(tmp_path / "typed.jsonl", [], extra_lines=[line])
    with pytest.raises(MetricsError, match=f"typed.jsonl, line 1: {message}"):
        read_metrics(path)


def test_label_count_must_match_file_count(tmp_path, two_runs):
    with pytest.raises(MetricsError, match="1 label"):
        plot_metrics([str(p) for p in two_runs], str(tmp_path / "out.png"), labels=["only one"])


def test_main_reports_bad_input_on_stderr_with_exit_status_1(tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main([str(tmp_path / "missing.jsonl"), "-o", str(out)]) == 1
    assert "missing.jsonl: no such metrics file" in capsys.readouterr().err
    assert not out.exists()


def test_missing_matplotlib_gives_the_install_hint(tmp_path, two_runs, monkeypatch):
    # a None entry in sys.modules makes the import fail as if matplotlib were absent.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + [
            "matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r'pip install "distbp\[plot\]"'):
        plot_metrics([str(two_runs[0])], str(tmp_path / "out.png"))
    assert not (tmp_path / "out.png").exists()


# ---- regression runs (issue 28) ---------------------------------------------------------------------------

def test_a_regression_record_with_null_accuracy_is_read(tmp_path):
    path = _write(tmp_path / "reg.jsonl", [_regression(e, 1 / (e + 1)) for e in range(3)])
    assert [r["test_r2"] for r in read_metrics(path)] == [0.0, 0.5, 1 - 1 / 3]


@pytest.mark.parametrize("runs, titles", [
    ([[_record(1, 1.0)]], ["accuracy"]),
    ([[_regression(1, 0.5)]], ["held-out R²"]),
    ([[_regression(1, 0.5, test=False)]], []),  # nothing but the loss to draw
    ([[_record(1, 1.0)], [_regression(1, 0.5)]], ["accuracy", "held-out R²"]),
    ([[{**_regression(1, 0.5), "test_r2": None}]], ["held-out RMSE"]),
], ids=["classifier", "regression", "regression without test rows", "both", "rmse only"])
def test_the_panels_beside_the_loss_are_those_the_runs_have(runs, titles):
    assert [title for title, _, _ in panels(runs)] == titles


@needs_matplotlib
@pytest.mark.parametrize("with_classifier", [False, True], ids=["regression", "regression and classifier"])
def test_regression_runs_are_drawn_alone_and_beside_a_classifier(tmp_path, two_runs, with_classifier):
    reg = _write(tmp_path / "reg.jsonl", [_regression(e, 1 / (e + 1)) for e in range(4)])
    no_test = _write(tmp_path / "reg_all.jsonl", [_regression(e, 1 / (e + 2), test=False) for e in range(4)])
    out = tmp_path / "curves.png"
    plot_metrics([str(p) for p in ([two_runs[0]] if with_classifier else []) + [reg, no_test]], str(out))
    assert out.read_bytes().startswith(PNG_SIGNATURE)
