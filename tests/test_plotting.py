"""curves.png: drawn when matplotlib is there, skipped with a note when it is not."""

import sys

from electra_fn import plotting


def test_plot_is_skipped_with_a_note_when_matplotlib_is_missing(tmp_path, monkeypatch):
    """matplotlib is an optional extra: without it a finished run must not crash at the end."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    said = []
    rows = [{"step": 1, "gen_loss": 1.0, "disc_loss": 0.5, "gen_accuracy": 0.1,
             "disc_replaced_accuracy": 0.2, "disc_original_accuracy": 0.9}]
    assert plotting.plot_curves(tmp_path, rows, [], log=said.append) is None
    assert not (tmp_path / "curves.png").exists()
    assert len(said) == 1 and "matplotlib is not installed" in said[0] and "[plot]" in said[0]


def test_curves_are_drawn_from_rows_and_evaluations(tmp_path):
    rows = [{"step": s, "gen_loss": 5.0 / s, "disc_loss": 0.5, "gen_accuracy": 0.01 * s,
             "disc_replaced_accuracy": 0.2, "disc_original_accuracy": 0.9} for s in (1, 2, 3)]
    evals = [{"step": s, "gen_accuracy": 0.1, "disc_auc": 0.6, "uniform/disc_auc": 0.7,
              "uniform/disc_replaced_accuracy": 0.3} for s in (0, 3)]
    path = plotting.plot_curves(tmp_path, rows, evals)
    assert path == tmp_path / "curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
