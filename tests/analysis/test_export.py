"""`abtest events export`: Parquet by experiment and day, incremental, idempotent, crash-safe."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from abtest.cli import app
from abtest.tables import Event
from analysis import export
from tests.online_data import DAY0, assignment, create_experiment, event, insert


def snapshot(folder):
    """Every file under the folder with its bytes' size and modification time."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".export.lock"
    }


def exported_events(folder):
    files = [str(p) for p in export.manifest_files(folder, "events")]
    dataset = ds.dataset(
        files, format="parquet", partitioning="hive", partition_base_dir=str(folder / "events")
    )
    return dataset.to_table().to_pylist()


def run(engine, folder, since=None):
    with engine.connect() as connection:
        return export.export(connection, folder, since)


def seed(engine):
    seeded = create_experiment(engine)
    rows = [
        event(
            seeded, "start", "a", "control", DAY0, latency_ms=120.5, attributes={"platform": "ios"}
        ),
        event(seeded, "export", "a", "control", DAY0 + timedelta(days=1, hours=2)),
        event(seeded, "start", "b", "treatment", DAY0 + timedelta(hours=3), intent="Golden hour"),
        # unlabelled export (no experiment): its own partition
        event(seeded, "export", "b", None, DAY0 + timedelta(hours=4), labelled=False),
    ]
    insert(engine, rows, [assignment(seeded, "a", "control"), assignment(seeded, "b", "treatment")])
    return seeded, rows


def test_export_partitions_by_experiment_and_day_and_round_trips(engine, tmp_path):
    seeded, rows = seed(engine)
    folder = tmp_path / "wh"
    result = run(engine, folder)
    assert result.rows == {"events": 4, "assignments": 2}
    paths = sorted(p.rsplit("/", 1)[0] for p in result.files)
    exp = f"experiment_id={seeded.experiment_id}"
    assert paths == [
        "assignments/" + exp,
        f"events/{exp}/day=2026-11-01",
        f"events/{exp}/day=2026-11-02",
        "events/experiment_id=__HIVE_DEFAULT_PARTITION__/day=2026-11-01",
    ]
    back = {r["client_event_id"]: r for r in exported_events(folder)}
    assert len(back) == 4
    for original in rows:
        got = back[original["client_event_id"]]
        assert got["experiment_id"] == original["experiment_id"]
        assert got["occurred_at"] == original["occurred_at"]
        assert got["project_id"] == original["project_id"]
        assert got["latency_ms"] == original["latency_ms"]
        attributes = json.loads(got["attributes"]) if got["attributes"] else None
        assert attributes == original["attributes"]
    assert str(back[rows[0]["client_event_id"]]["day"]) == "2026-11-01"


def test_a_rerun_writes_nothing_and_new_events_only_new_files(engine, tmp_path):
    seeded, _ = seed(engine)
    folder = tmp_path / "wh"
    run(engine, folder)
    before = snapshot(folder)
    again = run(engine, folder)
    assert again.rows == {"events": 0, "assignments": 0} and again.files == []
    assert snapshot(folder) == before  # not even the manifest is rewritten
    insert(engine, [event(seeded, "start", "c", "control", DAY0 + timedelta(days=2))])
    third = run(engine, folder)
    assert third.rows == {"events": 1, "assignments": 0}
    assert len(third.files) == 1 and third.files[0].startswith("events/")
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k in before and k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }
    ids = [r["id"] for r in exported_events(folder)]
    assert len(ids) == len(set(ids)) == 5


def test_late_commit_below_the_watermark_is_exported_once(engine, tmp_path):
    """PostgreSQL allocates ids before commit: a row can appear below the last exported id."""
    seeded, _ = seed(engine)
    folder = tmp_path / "wh"
    with engine.begin() as connection:
        top = connection.scalar(sa.select(sa.func.max(Event.id)))
        # leave a gap, as an uncommitted transaction holding id top+1 would
        connection.execute(
            sa.insert(Event), [{**event(seeded, "start", "x", "control", DAY0), "id": top + 2}]
        )
    run(engine, folder)
    with engine.begin() as connection:  # the "slow transaction" commits now
        connection.execute(
            sa.insert(Event), [{**event(seeded, "start", "late", "control", DAY0), "id": top + 1}]
        )
    late = run(engine, folder)
    assert late.rows["events"] == 1
    assert sorted(r["project_id"] for r in exported_events(folder)).count("late") == 1
    assert run(engine, folder).files == []  # and only once


def test_stray_files_of_a_crashed_run_are_removed_and_their_rows_exported(engine, tmp_path):
    seeded, _ = seed(engine)
    folder = tmp_path / "wh"
    run(engine, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    insert(engine, [event(seeded, "start", "c", "control", DAY0)])
    # A crash after writing a file but before the manifest: simulate by writing then restoring.
    run(engine, folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = run(engine, folder)
    assert len(result.removed) == 1 and result.rows["events"] == 1
    ids = [r["id"] for r in exported_events(folder)]
    assert len(ids) == len(set(ids)) == 5
    on_disk = {p.relative_to(folder).as_posix() for p in (folder / "events").rglob("*.parquet")}
    assert on_disk == {
        e["path"]
        for e in json.loads((folder / "manifest.json").read_text())["tables"]["events"]["files"]
    }


def test_since_skips_old_events_and_is_fixed_per_folder(engine, tmp_path):
    seed(engine)
    folder = tmp_path / "wh"
    result = run(engine, folder, since=date(2026, 11, 2))
    assert result.rows["events"] == 1
    assert run(engine, folder).rows["events"] == 0
    with pytest.raises(export.ExportError, match="since"):
        run(engine, folder, since=date(2026, 10, 1))


def test_bad_folders_and_a_second_export_are_refused(engine, tmp_path):
    seed(engine)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(export.ExportError, match="not a folder"):
        run(engine, a_file)
    folder = tmp_path / "wh"
    folder.mkdir()
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(export.ExportError, match="manifest"):
        run(engine, folder)
    (folder / "manifest.json").unlink()
    import fcntl

    with (folder / ".export.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(export.ExportError, match="another export"):
            run(engine, folder)
    assert not (folder / "manifest.json").exists()


def test_files_use_the_declared_schema(engine, tmp_path):
    seed(engine)
    run(engine, tmp_path / "wh")
    path = export.manifest_files(tmp_path / "wh", "events")[0]
    assert pq.read_schema(path).equals(export.arrow_schema(export.SOURCES[0]), check_metadata=False)


def test_export_columns_match_the_orm_tables():
    from abtest.tables import Base

    for source in export.SOURCES:
        orm = Base.metadata.tables[source.name]
        assert {name for name, _, _ in source.columns} == set(orm.c.keys())


def test_cli_export_prints_counts_and_refuses_a_bad_day(engine, tmp_path, monkeypatch):
    seed(engine)
    monkeypatch.setenv("ABTEST_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    runner = CliRunner()
    out = tmp_path / "wh"
    result = runner.invoke(app, ["events", "export", "--to", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == {"events": 4, "assignments": 2}
    result = runner.invoke(app, ["events", "export", "--to", str(out), "--since", "yesterday"])
    assert result.exit_code == 1 and "since" in result.output
