"""Poison events: refused at ingest, and never holding back the spool at replay.

The spool only accepts rows the database can store; a row it still refuses at replay (spooled
by an older version, or a database-side rule) goes to the dead letters, one by one, and every
other spooled row is stored.
"""

import math

import pytest
import sqlalchemy as sa

from abtest import db
from routing.eventlog import (
    EventSpool,
    UnstorableEvent,
    check_storable,
    replay_spool,
    row_to_json,
)
from tests.routing.test_bulk_ingest import export, make_experiment, stored, writer_for

POISON = [
    ("attributes", {"k": "\ud83d"}, "attributes.k"),
    ("attributes", {"k": "a\x00b"}, "attributes.k"),
    ("attributes", {"\x00": 1}, "attributes"),
    ("attributes", {"x": math.nan}, "attributes.x"),
    ("attributes", {"x": [math.inf]}, "attributes.x.0"),
    ("intent", "\udfff", "intent"),
    ("client_event_id", "a\x00b", "client_event_id"),
    ("latency_ms", math.nan, "latency_ms"),
    ("tokens", 2**40, "tokens"),
]


@pytest.mark.parametrize(("column", "value", "field"), POISON)
def test_unstorable_values_are_named(column, value, field):
    row = export("e1", "p1", **{column: value})
    with pytest.raises(UnstorableEvent) as caught:
        check_storable(row)
    assert caught.value.field == field


def test_deep_json_is_unstorable():
    deep: dict = {}
    for _ in range(80):
        deep = {"d": deep}
    with pytest.raises(UnstorableEvent, match="nested deeper"):
        check_storable(export("e1", "p1", attributes=deep))


def test_the_spool_refuses_unstorable_rows(tmp_path):
    spool = EventSpool(tmp_path)
    good = export("good", "p1")
    with pytest.raises(UnstorableEvent):
        spool.append("event", [good, export("bad", "p2", attributes={"k": "\ud83d"})])
    assert spool.depth == 0  # all or nothing
    spool.append("event", [good])
    assert spool.depth == 1


def _force_spool(spool, rows):
    """Spool rows without the ingest checks (as an older version, or a bug, could have)."""
    conn = spool._open()
    conn.executemany(
        "INSERT INTO spool (kind, payload) VALUES ('event', ?)", [(row_to_json(r),) for r in rows]
    )
    spool._depth += len(rows)


def test_replay_buries_a_poison_row_and_stores_every_other(postgres_url, tmp_path):
    engine = db.make_engine(postgres_url)
    db.upgrade(engine)
    exp_id, control, _ = make_experiment(engine, "poison")
    spool = EventSpool(tmp_path)
    writer = writer_for(engine, spool)
    rows = [export(f"ev{i}", f"p{i}", exp_id, control) for i in range(30)]
    rows[3] = export("ev3", "p3", exp_id, control, attributes={"k": "\ud83d"})
    rows[17] = export("ev17", "p17", exp_id, 999_999)  # an arm that does not exist
    _force_spool(spool, rows)
    assert replay_spool(writer, spool) == 30
    assert spool.depth == 0 and spool.dead_letters == 2
    assert set(stored(engine)) == {f"ev{i}" for i in range(30)} - {"ev3", "ev17"}
    letters = spool.dead_letter_entries()
    assert [letter["spool_id"] for letter in letters] == [4, 18]
    assert "surrogate" in letters[0]["error"] and "999999" in letters[1]["error"]
    assert '"ev3"' in letters[0]["payload"]
    # a fresh process reads the same counts back
    spool.close()
    again = EventSpool(tmp_path)
    assert (again.depth, again.dead_letters) == (0, 2)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar() == 28
    engine.dispose()


def test_spool_replay_cli_buries_poison_and_reports_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from abtest.cli import app as cli

    url = f"sqlite:///{tmp_path / 'abtest.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    exp_id, control, _ = make_experiment(engine, "cli")
    spool = EventSpool(tmp_path / "spool")
    rows = [export(f"ev{i}", f"p{i}", exp_id, control) for i in range(4)]
    rows[1] = export("ev1", "p1", exp_id, control, intent="a\x00b")
    _force_spool(spool, rows)
    spool.close()
    monkeypatch.setenv("ABTEST_DATABASE_URL", url)
    monkeypatch.setenv("ABTEST_SPOOL_DIR", str(tmp_path / "spool"))
    runner = CliRunner()
    replayed = runner.invoke(cli, ["spool", "replay"])
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 3 of 4" in replayed.output and "refused 1" in replayed.output
    status = runner.invoke(cli, ["spool", "status"])
    assert "0 entries" in status.output and "1 dead letters" in status.output
    assert set(stored(engine)) == {"ev0", "ev2", "ev3"}
    engine.dispose()
