"""The experiments a server remembers for a cold start during an outage are JSON, never pickle."""

import pickle

import pytest
from sqlalchemy.exc import OperationalError

from abtest.runtime import remembered_champion, remembered_experiments
from routing.assignment import (
    ArmDef,
    ExperimentDef,
    Namespace,
    experiments_from_json,
    experiments_to_json,
)

EXPERIMENT = ExperimentDef(
    key="exp",
    seed="s",
    arms=(
        ArmDef("control", 0.5, control=True, arm_id=1, variant="teacher", variant_config={"a": 1}),
        ArmDef("student", 0.5, arm_id=2, variant="knn", timeout_s=2.0, cache=False),
    ),
    coverage=0.8,
    namespace=Namespace("ns", 0.1, 0.6),
    overrides={"p1": "student"},
    id=7,
    allocation_version=2,
)


def outage():
    raise OperationalError("SELECT 1", {}, Exception("connection refused"))


def test_json_round_trip_keeps_every_field():
    (back,) = experiments_from_json(experiments_to_json([EXPERIMENT]))
    assert back == EXPERIMENT
    assert back.overrides == EXPERIMENT.overrides
    assert back.arm("control").variant_config == {"a": 1}
    assert back.ranges == EXPERIMENT.ranges


def test_an_outage_recalls_the_last_experiments_from_json(tmp_path):
    answers = [lambda: [EXPERIMENT], outage]
    load = remembered_experiments(lambda: answers.pop(0)(), tmp_path)
    assert load() == [EXPERIMENT]
    assert (tmp_path / "experiments.json").exists()
    assert load() == [EXPERIMENT]  # the database is down: recalled


class Exploit:
    def __reduce__(self):
        return (open, (str(MARKER), "w"))


MARKER = None


def test_a_pickle_in_the_spool_folder_is_never_loaded(tmp_path):
    global MARKER
    MARKER = tmp_path / "pwned"
    (tmp_path / "experiments.json").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(OperationalError):
        remembered_experiments(outage, tmp_path)()
    assert not MARKER.exists()


def test_the_champion_is_recalled_too(tmp_path):
    champion = EXPERIMENT.arm("control")
    answers = [lambda: champion, outage, lambda: None, outage]
    load = remembered_champion(lambda: answers.pop(0)(), tmp_path)
    assert load() == champion
    assert load() == champion  # recalled during the outage
    assert load() is None  # no champion any more
    assert load() is None
