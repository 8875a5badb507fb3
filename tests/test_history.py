"""History: the SQLite database of every run; ingesting the same records twice adds nothing."""

from __future__ import annotations

import shutil

import pytest

from harness.cli import main
from harness.report import history
from harness.report.results import CorruptRecordWarning
from tests.test_results import LLAMA_SFT, LLAMA_TINY, gpu_env, record, write


def test_ingest_twice_adds_nothing(tmp_path):
    db = tmp_path / "h.sqlite"
    path = write(tmp_path / "r.jsonl", [record(LLAMA_TINY, "pass"), record(LLAMA_SFT, "fail")])
    first = history.ingest([path], db)
    assert (first.files, first.read, first.added) == (1, 2, 2)
    second = history.ingest([path], db)
    assert (second.read, second.added) == (2, 0)
    # The same run merged into another file (e.g. CI shards combined) is still not new.
    shutil.copy(path, tmp_path / "merged.jsonl")
    assert history.ingest([str(tmp_path / "*.jsonl")], db).added == 0
    assert history.count(db) == 2


def test_a_cell_that_really_ran_twice_is_kept_twice(tmp_path):
    db = tmp_path / "h.sqlite"
    same_second = "2026-01-01T00:00:00+00:00"
    path = write(tmp_path / "r.jsonl", [record(LLAMA_TINY, "fail", timestamp=same_second),
                                        record(LLAMA_TINY, "pass", timestamp=same_second)])
    assert history.ingest([path], db).added == 2


def test_runs_and_frame_come_back_in_order(tmp_path):
    db = tmp_path / "h.sqlite"
    day1, day1_later, day2 = ("2026-01-01T00:00:00+00:00", "2026-01-01T00:00:05+00:00",
                              "2026-01-02T00:00:00+00:00")
    write(tmp_path / "a.jsonl", [record(LLAMA_TINY, "pass", run_id="r2", timestamp=day2, env=gpu_env())])
    write(tmp_path / "b.jsonl", [record(LLAMA_TINY, "fail", run_id="r1", timestamp=day1),
                                 record(LLAMA_SFT, "pass", run_id="r1", timestamp=day1_later)])
    history.ingest([str(tmp_path / "*.jsonl")], db)
    runs = history.runs(db)
    assert [r.run_id for r in runs] == ["r1", "r2"]
    assert (runs[0].cells, runs[0].device_classes, runs[1].device_classes) == (2, ("cpu",), ("gpu",))
    assert runs[1].devices == ("NVIDIA H100 80GB HBM3",)
    frame = history.load_frame(db)
    assert frame["status"].tolist() == ["fail", "pass", "pass"]
    assert set(history.load_frame(db, ["r2"])["where"]) == {"NVIDIA H100 80GB HBM3"}


def test_ingest_skips_corrupt_lines_and_keeps_the_rest(tmp_path):
    path = write(tmp_path / "r.jsonl", [record(LLAMA_TINY, "pass")])
    with path.open("a") as handle:
        handle.write("{not json\n")
    with pytest.warns(CorruptRecordWarning, match=r"r\.jsonl:2:"):
        report = history.ingest([path], tmp_path / "h.sqlite")
    assert report.added == 1


def test_cli_ingest_reports_counts(tmp_path, capsys):
    db = tmp_path / "sub" / "h.sqlite"
    path = write(tmp_path / "r.jsonl", [record(LLAMA_TINY, "pass")])
    assert main(["ingest", str(path), "--db", str(db)]) == 0
    assert main(["ingest", str(path), "--db", str(db)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "added 1 new" in out[0] and "added 0 new, 1 already present; 1 records in total" in out[1]
