"""``experiments.reproduce`` end to end on the smoke configuration and the GLUE fixtures, its
resumption, and the report's arithmetic (:mod:`electra_fn.reproduction`)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from electra_fn import reproduction

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "glue"


def test_compare_reports_medians_gains_and_averages_without_wnli():
    def res(values):
        return {"values": values, "median": sorted(values)[len(values) // 2],
                "std": 1.0, "train_examples": 100}

    pre = {"sst2": res([80.0, 82.0, 81.0]), "rte": res([55.0, 53.0, 54.0]),
           "wnli": res([50.0, 56.3, 40.0])}
    scratch = {"sst2": res([70.0, 71.0, 72.0]), "rte": res([50.0, 52.0, 51.0]),
               "wnli": res([56.3, 56.3, 56.3])}
    summary = {"steps": 10, "tokens_seen": 640, "wall_time_s": 36.0,
               "compute": {"flops": 1e12, "paper_fraction": 1e-6}}
    r = reproduction.compare(summary, pre, scratch, ["sst2", "rte", "wnli"])
    assert r["tasks"]["sst2"]["gain"] == pytest.approx(81.0 - 71.0)
    assert r["averaged_over"] == ["sst2", "rte"]
    assert r["average"]["pretrained"] == pytest.approx((81.0 + 54.0) / 2)
    assert r["average"]["gain"] == pytest.approx((81 + 54 - 71 - 51) / 2)
    assert r["average"]["electra_small_owt"] == pytest.approx((88.3 + 68.5) / 2)
    md = reproduction.markdown(r)
    assert "| sst2 | accuracy | 3 / 3 |" in md and "+10.0" in md and "Average over sst2, rte" in md


def test_reproduce_runs_end_to_end_and_resumes(tmp_path, monkeypatch, capsys):
    from experiments import reproduce

    monkeypatch.chdir(REPO)  # the smoke configuration's corpus path is relative to the repo
    args = ["--config", "smoke", "--glue-dir", str(FIXTURES), "--tasks", "sst2,stsb",
            "--seeds", "2", "--epochs", "1", "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--dtype", "float32"]
    assert reproduce.main(args) == 0, capsys.readouterr().err[-3000:]
    out = tmp_path / "out"
    report = orjson.loads((out / "report.json").read_bytes())
    assert set(report["tasks"]) == {"sst2", "stsb"}
    for t in ("sst2", "stsb"):
        row = report["tasks"][t]
        assert len(row["pretrained"]["values"]) == len(row["scratch"]["values"]) == 2
        assert row["gain"] == pytest.approx(row["pretrained"]["median"] - row["scratch"]["median"])
    pre = report["pretraining"]
    assert pre["steps"] == 30 and pre["flops"] == 30 * pre["flops_per_step"]
    assert 0 < pre["paper_fraction"] < 1e-6
    assert "pre-trained" in (out / "results.md").read_text()
    # a second run finds every stage done and rebuilds the same report
    capsys.readouterr()
    assert reproduce.main(args) == 0
    err = capsys.readouterr().err
    assert "pre-training: done before" in err and "sst2: done before" in err
    again = orjson.loads((out / "report.json").read_bytes())
    assert again["tasks"] == report["tasks"]
