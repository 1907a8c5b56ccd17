"""Dataset building from logged teacher outputs and exports (paper 3.1), pure and through the
CLI on both database backends."""

import json

import pytest
from typer.testing import CliRunner

from abtest import db
from abtest.cli import app
from abtest.settings import get_settings
from abtest.tables import Event, Variant
from models.dataset import file_hash, load_records, load_split, normalize_intent
from models.distill.dataset_builder import (
    DatasetBuildError,
    LoggedCall,
    build_from_bundled,
    build_from_logs,
    select_best_outputs,
    split_records,
)
from models.tools import ToolConfig

WARM = {"adjust": {"temperature": 30}, "filter": {"name": "vivid", "intensity": 50}}
COLD = {"adjust": {"temperature": -30}, "filter": {"name": "winter", "intensity": 80}}
SELECTIVE = {"selective_adjust": {"blue": {"saturation": 20, "luminance": 0}}}


def call(intent, output, exported):
    return LoggedCall(intent, output, exported)


def test_best_output_per_intent_and_tool_by_export_rate():
    calls = [
        # "Sunset": WARM 1 of 2 exported (0.5), COLD 2 of 3 exported (0.67) -> COLD wins.
        call("Sunset", WARM, True),
        call("sunset ", WARM, False),
        call("SUNSET", COLD, True),
        call("sunset", COLD, True),
        call("sunset", COLD, False),
    ]
    records, stats = select_best_outputs(calls)
    assert len(records) == 1
    record = records[0]
    assert record.calls == 5  # every call of the normalised intent counts (for r_i)
    assert record.intent == "sunset"  # the most frequent spelling
    assert record.teacher == ToolConfig.from_record(COLD)
    assert stats.exported_calls == 3


def test_tools_are_chosen_independently():
    # adjust: WARM's adjust exported in 2/2 calls; filter: the shared filter counts are pooled.
    a = {**WARM, "filter": {"name": "cyberpunk", "intensity": 60}}
    b = {**COLD, "filter": {"name": "cyberpunk", "intensity": 60}}
    c = {**COLD, "filter": {"name": "darkness", "intensity": 70}}
    calls = [call("neon", a, True), call("neon", a, True), call("neon", b, False),
             call("neon", c, True), call("neon", c, False)]  # fmt: skip
    [record] = select_best_outputs(calls)[0]
    # adjust: WARM 2/2 beats COLD 1/3; filter: cyberpunk 2/3 beats darkness 1/2.
    assert record.teacher.adjust == ToolConfig.from_record(WARM).adjust
    assert record.teacher.filter.name == "cyberpunk"


def test_zero_export_outputs_and_intents_are_dropped():
    calls = [
        call("gloomy", COLD, False),
        call("gloomy", WARM, False),
        call("bright", WARM, True),
        call("bright", COLD, False),  # an output never exported: dropped even if frequent
        call("bright", COLD, False),
    ]
    records, stats = select_best_outputs(calls)
    assert [r.intent for r in records] == ["bright"]
    assert records[0].teacher == ToolConfig.from_record(WARM)
    assert stats.intents_without_exports == 1
    assert stats.outputs_dropped_zero_exports["adjust"] == 3  # gloomy x2, bright's COLD


def test_unusable_calls_are_skipped_and_counted():
    calls = [
        call("  ", WARM, True),
        call("x", "not a mapping", True),
        call("x", {**WARM, "parse_failures": ["adjust"]}, True),
        call("x", SELECTIVE, True),
    ]
    records, stats = select_best_outputs(calls)
    assert stats.skipped_calls == 3
    assert len(records) == 1 and records[0].teacher.selective_adjust is not None


def test_split_is_seeded_disjoint_and_sized():
    records = load_split("train")[:50]
    train, test = split_records(records, test_size=10, seed=3)
    again_train, again_test = split_records(list(reversed(records)), test_size=10, seed=3)
    assert [r.intent for r in test] == [r.intent for r in again_test]  # input order irrelevant
    assert len(train) == 40 and len(test) == 10
    assert not {r.intent for r in train} & {r.intent for r in test}
    other = split_records(records, test_size=10, seed=4)[1]
    assert [r.intent for r in other] != [r.intent for r in test]
    assert len(split_records(records)[1]) == 10  # default: a fifth of 50


@pytest.mark.parametrize("size", [0, 50, 51])
def test_split_rejects_impossible_sizes(size):
    with pytest.raises(DatasetBuildError, match="test size"):
        split_records(load_split("train")[:50], test_size=size)


def test_build_from_logs_writes_split_and_manifest(tmp_path):
    calls = [call(f"intent {i}", WARM if i % 2 else COLD, True) for i in range(20)]
    calls.append(call("intent 3", COLD, True))
    manifest = build_from_logs(calls, tmp_path, test_size=5, seed=1)
    train = load_records(tmp_path / "train.jsonl")
    test = load_records(tmp_path / "test.jsonl")
    assert (len(train), len(test)) == (15, 5)
    assert manifest["files"]["train"]["sha256"] == file_hash(tmp_path / "train.jsonl")
    assert manifest["files"]["test"]["sha256"] == file_hash(tmp_path / "test.jsonl")
    assert manifest["counts"]["test"]["rows"] == 5
    assert manifest["logs"]["calls"] == 21
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    by_intent = {r.intent: r for r in train + test}
    assert by_intent["intent 3"].calls == 2


def test_build_from_logs_needs_exported_intents(tmp_path):
    with pytest.raises(DatasetBuildError, match="0 intent"):
        build_from_logs([call("a", WARM, False)], tmp_path)
    assert not (tmp_path / "manifest.json").exists()


def test_build_from_bundled_keeps_the_bundled_split(tmp_path):
    manifest = build_from_bundled(tmp_path)
    assert manifest["counts"]["test"]["rows"] == len(load_split("test"))
    test_keys = {normalize_intent(r.intent) for r in load_records(tmp_path / "test.jsonl")}
    train_keys = {normalize_intent(r.intent) for r in load_records(tmp_path / "train.jsonl")}
    assert not test_keys & train_keys
    assert manifest["counts"]["train"]["adjust"] > 0 and manifest["source"] == "bundled"


# --- the abtest layer: events table -> dataset --------------------------------------------------


@pytest.fixture
def cli(database_url, monkeypatch):
    monkeypatch.setenv("ABTEST_DATABASE_URL", database_url)
    get_settings.cache_clear()
    return lambda *args: CliRunner().invoke(app, list(args))


def _log(engine, rows):
    with db.session_scope(engine) as s:
        s.add(Variant(name="teacher", kind="teacher", config={}))
        # an earlier reference, archived (one reference may be active): its outputs still count
        s.add(Variant(name="other", kind="recorded", config={}, status="archived"))
        s.add(Variant(name="student", kind="local_student", config={}))
        for number, (project, kind, intent, output, served_by) in enumerate(rows):
            s.add(Event(client_event_id=f"e{number}", type=kind, project_id=project,
                        intent=intent, output=output, served_by=served_by))  # fmt: skip


def test_cli_builds_from_logged_events(cli, engine, tmp_path):
    rows = [(f"p{i}", "start", f"Intent {i % 6}", WARM if i < 6 else COLD, "teacher")
            for i in range(12)]  # fmt: skip
    rows += [(f"p{i}", "export", None, None, None) for i in range(6)]  # WARM outputs exported
    rows += [("p12", "start", "intent 0", SELECTIVE, "other"), ("p12", "export", None, None, None)]
    _log(engine, rows)
    out = tmp_path / "ds"
    result = cli("dataset", "build", "--out", str(out), "--test-size", "2", "--json",
                 "--served-by", "teacher")  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["logs"]["calls"] == 12  # the "other" variant's start is filtered out
    records = load_records(out / "train.jsonl") + load_records(out / "test.jsonl")
    assert len(records) == 6
    assert all(r.teacher == ToolConfig.from_record(WARM) and r.calls == 2 for r in records)
    # Without --served-by: every teacher-kind variant ("other" is a recorded teacher here),
    # never a student.
    out2 = tmp_path / "ds2"
    result = cli("dataset", "build", "--out", str(out2), "--test-size", "2", "--json")
    assert json.loads(result.output)["logs"]["calls"] == 13


def test_student_outputs_are_not_distilled_by_default(cli, engine, tmp_path):
    rows = [("p1", "start", "a", WARM, "student"), ("p1", "export", None, None, None),
            ("p2", "start", "b", WARM, "student"), ("p2", "export", None, None, None)]  # fmt: skip
    _log(engine, rows)
    result = cli("dataset", "build", "--out", str(tmp_path / "ds"))
    assert result.exit_code == 1 and "0 intent(s)" in result.output


def test_cli_dataset_errors_change_nothing(cli, engine, tmp_path):
    _log(engine, [("p1", "start", "a", WARM, "teacher")])  # never exported
    out = tmp_path / "ds"
    result = cli("dataset", "build", "--out", str(out))
    assert result.exit_code == 1 and "exported outputs" in result.output
    assert not out.exists() or not any(out.iterdir())
    result = cli("dataset", "build", "--out", str(out), "--served-by", "nobody")
    assert result.exit_code == 1 and "served_by" in result.output
    result = cli("dataset", "build", "--out", str(out), "--from-bundled", "--test-size", "3")
    assert result.exit_code == 1 and "from-bundled" in result.output
