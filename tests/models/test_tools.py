"""The tool schema (models.tools) and the bundled dataset loader (models.dataset)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.dataset import (
    DatasetError,
    IntentRecord,
    bundled_path,
    file_hash,
    load_records,
    load_split,
    normalize_intent,
    parse_record,
    write_records,
)
from models.tools import (
    ADJUST_ORDER,
    COLORS,
    FILTER_NAMES,
    SELECTIVE_ORDER,
    Adjust,
    Filter,
    SelectiveAdjust,
    ToolConfig,
    ToolValidationError,
    canonical_filter,
    clamp,
    parse_adjust,
    parse_filter,
    parse_selective,
)

# --- tools ------------------------------------------------------------------------------------


def test_vector_orders():
    assert ADJUST_ORDER == (
        "exposure", "contrast", "brightness", "highlights", "shadows", "saturation", "vibrance",
        "temperature", "tint", "linearOffset", "hue", "bloom", "sharpen", "structure",
    )  # fmt: skip
    assert SELECTIVE_ORDER[:3] == (
        ("red", "saturation"),
        ("red", "luminance"),
        ("orange", "saturation"),
    )
    assert len(SELECTIVE_ORDER) == 12 and SELECTIVE_ORDER[-1] == ("blue", "luminance")
    part = parse_adjust({"hue": 120, "exposure": -5})
    vector = part.vector()
    assert vector.shape == (14,) and vector[0] == -5 and vector[ADJUST_ORDER.index("hue")] == 120
    selective = parse_selective({"cyan": {"luminance": 7}})
    assert np.flatnonzero(selective.vector()).tolist() == [
        SELECTIVE_ORDER.index(("cyan", "luminance"))
    ]


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("faded AL2", "faded_AL2"),
        ("teal and orange 1", "teal_and_orange_1"),
        ("Teal-And-Orange-3", "teal_and_orange_3"),
        ("NIGHT VISION", "night_vision"),
        ("cyberpunck", "cyberpunk"),
        ("", "none"),
        (None, "none"),
        ("sparkly unicorn", "none"),
    ],
)
def test_canonical_filter(given, canonical):
    assert canonical_filter(given) == canonical


def test_canonical_filter_without_fuzzy_matching():
    assert canonical_filter("cyberpunck", fuzzy=False) == "none"
    assert canonical_filter("faded AL2", fuzzy=False) == "faded_AL2"
    assert len(set(FILTER_NAMES)) == 34 and FILTER_NAMES[0] == "none"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: parse_adjust({"exposure": 101}), "adjust.exposure"),
        (lambda: parse_adjust({"hue": -1}), "adjust.hue"),
        (lambda: parse_adjust({"vignette": 5}), "adjust.vignette"),
        (lambda: parse_adjust({"contrast": "lots"}), "adjust.contrast"),
        (lambda: parse_adjust({"contrast": True}), "adjust.contrast"),
        (lambda: parse_adjust({"contrast": float("nan")}), "adjust.contrast"),
        (lambda: parse_adjust([1, 2]), "adjust"),
        (lambda: parse_selective({"purple": {}}), "selective_adjust.purple"),
        (lambda: parse_selective({"red": 5}), "selective_adjust.red"),
        (lambda: parse_selective({"red": {"hue": 5}}), "selective_adjust.red.hue"),
        (lambda: parse_selective({"red": {"saturation": -101}}), "selective_adjust.red.saturation"),
        (lambda: parse_filter({"name": "sparkly", "intensity": 5}), "filter.name"),
        (lambda: parse_filter({"name": "vivid", "intensity": 101}), "filter.intensity"),
        (lambda: parse_filter("vivid"), "filter"),
    ],
)
def test_strict_validation_names_the_field(call, field):
    with pytest.raises(ToolValidationError) as info:
        call()
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_lenient_parsing_clamps_drops_and_maps():
    part = parse_adjust({"exposure": 150, "hue": 400, "bloom": -5, "vignette": 9}, strict=False)
    assert part.as_dict()["exposure"] == 100 and part.as_dict()["hue"] == 360
    assert part.as_dict()["bloom"] == 0
    lut = parse_filter({"name": "faded AL2", "intensity": 150}, strict=False)
    assert lut == Filter("faded_AL2", 100)
    assert parse_filter({"name": "sparkly", "intensity": 50}, strict=False) is None
    assert clamp(-3, (0, 100)) == 0 and clamp(50, (0, 100)) == 50


def test_unused_tools_and_records():
    assert parse_adjust({}) is None and parse_adjust({k: 0 for k in ADJUST_ORDER}) is None
    assert parse_selective({c: {"saturation": 0, "luminance": 0} for c in COLORS}) is None
    assert parse_filter({"name": "none", "intensity": 0}) is None
    empty = ToolConfig()
    assert not any(empty.uses(t) for t in ("adjust", "selective_adjust", "filter"))
    assert empty.to_record() == {
        "adjust": {},
        "selective_adjust": {},
        "filter": {"name": "none", "intensity": 0},
    }
    full = ToolConfig(
        adjust=Adjust(tuple(float(i) for i in range(14))),
        selective_adjust=SelectiveAdjust(tuple(float(-i) for i in range(12))),
        filter=Filter("winter", 80.0),
    )
    assert ToolConfig.from_record(full.to_record()) == full
    assert full.to_record()["selective_adjust"]["blue"] == {"saturation": -10, "luminance": -11}


# --- dataset ----------------------------------------------------------------------------------


def test_bundled_splits_load_and_match_the_readme_counts():
    train, test = load_split("train"), load_split("test")
    assert (len(train), len(test)) == (3402, 1000)
    assert sum(r.teacher.uses("adjust") for r in test) == 916
    assert sum(r.teacher.uses("selective_adjust") for r in test) == 351
    assert sum(r.teacher.uses("filter") for r in test) == 654
    assert sum(r.calls >= 3 for r in test) == 362
    train_keys = {normalize_intent(r.intent) for r in train}
    assert not train_keys & {normalize_intent(r.intent) for r in test}


def test_unknown_split_is_a_dataset_error():
    with pytest.raises(DatasetError, match="unknown split"):
        bundled_path("validation")


def test_normalize_intent():
    assert normalize_intent("  Golden\tHOUR \n") == "golden hour"


def test_write_and_reload_round_trip(tmp_path):
    records = load_split("test")[:25]
    path = tmp_path / "copy.jsonl"
    digest = write_records(records, path)
    assert digest == file_hash(path)
    assert load_records(path) == records


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"intent": "", "calls": 1}', "intent"),
        ('{"intent": "x", "calls": 0}', "calls"),
        ('{"intent": "x", "calls": 1, "adjust": {"exposure": 500}}', "adjust.exposure"),
    ],
)
def test_bad_dataset_lines_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(load_split("test")[0].to_json())
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(DatasetError) as info:
        load_records(path)
    assert f"{path}:" in str(info.value) and message in str(info.value)


def test_parse_record_lenient_mode():
    row = {"intent": "x", "calls": 2, "filter": {"name": "teal and orange 1", "intensity": 120}}
    record = parse_record(row, strict=False)
    assert isinstance(record, IntentRecord)
    assert record.teacher.filter == Filter("teal_and_orange_1", 100)
    assert record.to_json()["calls"] == 2
