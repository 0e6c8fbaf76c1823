"""The sweeps' history: written one file per run, read back once per run, and every regression rule."""

from datetime import datetime, timedelta, timezone

import pandas as pd

from pruneflow.tasks.decide.history import append_history, history_rows, read_history, regressions, runs_summary
from pruneflow.tasks.libs.outcome import Point
from pruneflow.tasks.specs.config import SweepConfig
from pruneflow.tasks.specs.formats import KERAS
from tests.helpers.models import target_result

START = datetime(2026, 11, 1, 2, tzinfo=timezone.utc)


def history(*runs):
    """Rows as the sweep appends them: (run id, [(target, accuracy, zip bytes, promoted[, latency ms[, machine]])][,
    config digest]), each the target's int8 file."""
    return pd.DataFrame([
        {"flow_run_id": run_id, "started": START + timedelta(days=day), "target": target, "format": "int8",
         "config_digest": digest, "accuracy": accuracy, "zip_bytes": size, "promoted": promoted,
         "latency_ms": latency[0] if latency else 1.0, "machine": latency[1] if len(latency) > 1 else "ci"}
        for day, (run_id, rows, *other) in enumerate(runs) for digest in [other[0] if other else "nightly"]
        for target, accuracy, size, promoted, *latency in rows
    ])


def test_a_promoted_model_less_accurate_or_larger_than_the_last_is_a_regression():
    runs = runs_summary(history(
        ("mon", [(0.5, 0.97, 1000, False), (0.8, 0.96, 600, True)]),
        ("tue", [(0.5, 0.97, 1000, False), (0.8, 0.958, 600, True)]),  # -0.2 points: within tolerance
        ("wed", [(0.5, 0.95, 1000, True), (0.8, 0.90, 600, False)]),  # larger model promoted
        ("thu", [(0.5, 0.93, 1000, True)]),  # 2 points less accurate
        ("fri", [(0.5, 0.80, 1000, False)]),  # nothing promoted
        ("sat", [(0.5, 0.50, 9000, True)], "someone's manual run of another config"),
        ("sun", [(0.5, 0.93, 1000, True)]),  # compared with thu: fri promoted nothing
    ))
    assert list(runs["target"].fillna(0)) == [0.8, 0.8, 0.5, 0.5, 0, 0.5, 0.5]
    found = regressions(runs, tolerance=0.5)
    assert set(found) == {"wed", "thu", "fri"}
    assert found["wed"] == "accuracy 0.9500, down 0.80 points from 0.9580; size 1,000 B zipped, up from 600 B"
    assert found["thu"].startswith("accuracy 0.9300, down 2.00 points")
    assert found["fri"] == "no model passed the gate (the run before promoted one)"


def test_a_drop_exactly_at_the_tolerance_is_not_a_regression():
    runs = runs_summary(history(("mon", [(0.8, 0.96, 600, True)]), ("tue", [(0.8, 0.955, 600, True)])))
    assert regressions(runs, tolerance=0.5) == {}
    assert set(regressions(runs, tolerance=0.4)) == {"tue"}


def test_a_smaller_or_equal_promoted_model_is_not_a_regression():
    runs = runs_summary(history(("mon", [(0.8, 0.96, 600, True)]), ("tue", [(0.9, 0.96, 500, True)]),
                                ("wed", [(0.9, 0.96, 500, True)])))
    assert regressions(runs, tolerance=0.5) == {}


def test_a_first_run_and_runs_of_a_config_that_never_promoted_are_not_regressions():
    runs = runs_summary(history(("mon", [(0.8, 0.5, 600, False)]), ("tue", [(0.8, 0.4, 600, False)])))
    assert regressions(runs, tolerance=0.5) == {}


def test_history_files_read_back_as_one_table_and_a_retried_run_counts_once(tmp_path):
    gate = SweepConfig(max_accuracy_drop=1.0, min_sparsity=0.5)
    results = [target_result(0.5, 0.95, 300), target_result(0.8, 0.90, 200)]
    promoted = (results[0], results[0].deployable(KERAS))

    def append(run_id, started, promoted):
        rows = history_rows(results, promoted, gate, flow_run_id=run_id, started=started,
                            code_version="c0de", config_digest="cfg")
        return append_history(tmp_path / "history", rows)

    append("run-1", START, promoted)
    append("run-2", START + timedelta(days=1), None)  # failed, then retried by the UI's Retry:
    append("run-2", START + timedelta(days=1, minutes=5), promoted)  # same flow run id, later rows
    assert len(list((tmp_path / "history").glob("*.parquet"))) == 3  # nothing overwritten
    assert not list((tmp_path / "history").glob(".*"))  # no temporary file left
    (tmp_path / "history" / ".being-written.tmp.parquet").write_bytes(b"PAR1 half")  # another sweep, mid-write
    table = read_history(tmp_path / "history")
    assert list(table["flow_run_id"]) == ["run-1", "run-1", "run-2", "run-2"]
    assert list(table["promoted"]) == [True, False, True, False]  # run-2 counted with its retry's rows
    assert list(table["passed_gate"]) == [True, False, True, False]  # 0.8 dropped 5 points
    assert set(table["code_version"]) == {"c0de"} and list(table["target"]) == [0.5, 0.8, 0.5, 0.8]
    assert list(runs_summary(table)["target"]) == [0.5, 0.5]
    assert read_history(tmp_path / "none").empty


def test_a_promoted_file_slower_beyond_the_tolerance_is_a_regression():
    runs = runs_summary(history(
        ("mon", [(0.8, 0.96, 600, True, 1.0)]),
        ("tue", [(0.8, 0.96, 600, True, 1.25)]),  # 25 % slower: at the tolerance
        ("wed", [(0.8, 0.96, 600, True, 1.6)]),  # 28 % slower than tue
    ))
    found = regressions(runs, tolerance=0.5, latency_tolerance=0.25)
    assert found == {"wed": "latency 1.600 ms, up 28% from 1.250 ms"}
    assert set(regressions(runs, tolerance=0.5, latency_tolerance=0.1)) == {"tue", "wed"}


def test_latency_measured_on_another_kind_of_machine_is_not_compared():
    runs = runs_summary(history(
        ("mon", [(0.8, 0.96, 600, True, 1.0, "laptop")]),
        ("tue", [(0.8, 0.96, 600, True, 3.0, "ci runner")]),  # slower machine, same file
        ("wed", [(0.8, 0.96, 600, True, 3.1, "ci runner")]),
    ))
    assert regressions(runs, tolerance=0.5, latency_tolerance=0.25) == {}


def test_every_file_of_every_target_is_a_row_with_its_format_size_accuracy_and_latency(tmp_path):
    gate = SweepConfig(max_accuracy_drop=1.0, min_sparsity=0.5)
    result = target_result(0.8, 0.95, 300, latency_ms=2.0, files={"int8": (0.93, 90, 0.05), "float32": (0.95, 280, 0.1)})
    rows = history_rows([result], (result, result.deployable("float32")), gate, flow_run_id="run-1", started=START,
                        code_version="c0de", config_digest="cfg")
    append_history(tmp_path, rows)
    table = read_history(tmp_path)
    assert list(table["format"]) == [KERAS, "int8", "float32"]
    assert list(table["zip_bytes"]) == [300, 90, 280] and list(table["latency_ms"]) == [2.0, 0.05, 0.1]
    assert list(table["accuracy"]) == [0.95, 0.93, 0.95] and list(table["passed_gate"]) == [True, False, True]
    assert list(table["promoted"]) == [False, False, True]
    assert runs_summary(table)[["format", "zip_bytes"]].values.tolist() == [["float32", 280]]


def test_history_written_before_files_were_exported_reads_as_the_keras_files(tmp_path):
    old = pd.DataFrame([{"flow_run_id": "old", "started": START, "config_digest": "cfg", "target": 0.8,
                         "accuracy": 0.95, "zip_bytes": 300, "promoted": True}])  # no format, no latency
    append_history(tmp_path, old)
    new = history_rows([target_result(0.8, 0.95, 300, latency_ms=2.0)], None, SweepConfig(), flow_run_id="new",
                       started=START + timedelta(days=1), code_version="c0de", config_digest="cfg")
    append_history(tmp_path, new)
    table = read_history(tmp_path)
    assert list(table["format"]) == [KERAS, KERAS]
    assert pd.isna(table["latency_ms"].iloc[0]) and table["latency_ms"].iloc[1] == 2.0
    assert regressions(runs_summary(table), tolerance=0.5) == {"new": "no model passed the gate (the run before promoted one)"}


def test_failed_targets_are_recorded_and_a_run_with_failures_is_flagged(tmp_path):
    gate = SweepConfig()
    ok = history_rows([target_result(0.8, 0.95, 300)], None, gate, flow_run_id="mon", started=START,
                      code_version="c", config_digest="d")
    append_history(tmp_path, ok)
    failed = history_rows([], None, gate, flow_run_id="tue", started=START + timedelta(days=1), code_version="c",
                          config_digest="d", failures={Point(0.8): "ResourceExhaustedError: OOM", Point(0.5): "OSError: disk"})
    assert failed[["target", "format", "failed", "promoted"]].values.tolist() == [
        [0.5, "", True, False], [0.8, "", True, False],
    ]
    assert failed["accuracy"].isna().all()
    append_history(tmp_path, failed)
    runs = runs_summary(read_history(tmp_path))
    assert runs[["flow_run_id", "targets", "failed"]].values.tolist() == [["mon", 1, 0], ["tue", 2, 2]]
    assert regressions(runs, tolerance=0.5) == {"tue": "2 of 2 targets failed (first: OSError: disk)"}
