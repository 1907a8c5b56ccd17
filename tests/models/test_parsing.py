"""The forgiving parser: free model text -> tool configuration, never raising."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.parsing import extract_object, parse_outputs, parse_tool_output, split_answer
from models.prompts import student_target
from models.tools import (
    ADJUST_ORDER,
    ADJUST_RANGES,
    COLORS,
    FILTER_NAMES,
    INTENSITY_RANGE,
    TOOLS,
    Adjust,
    Filter,
    SelectiveAdjust,
    ToolConfig,
)

# --- examples ---------------------------------------------------------------------------------


def adjust(**values: float) -> Adjust:
    return Adjust(tuple(float(values.get(k, 0)) for k in ADJUST_ORDER))


def test_teacher_answer_keeps_the_rationale():
    text = 'TOOL:\nYes, warm it up.\nJSON:\n{"temperature": 30, "contrast": 5}'
    parsed = parse_tool_output("adjust", text)
    assert parsed.ok and parsed.rationale == "Yes, warm it up."
    assert parsed.part == adjust(temperature=30, contrast=5)


@pytest.mark.parametrize(
    "text",
    [
        '```json\n{"exposure": 10, "hue": 20}\n```',
        "Here you go:\n```\n{'exposure': 10, 'hue': 20,}\n```\nHope it helps!",
        'Parameters: {"exposure": "10", "hue": "20"}',
        "Parameters: {exposure: 10, hue: 20}",
        'Parameters: {"Exposure": 10.0, "HUE": 20, "vignette": 50}',
        'JSON: {"parameters": {"exposure": 10, "hue": 20}}',
        'Parameters: {"exposure": 10, "hue": 20',  # truncated by max_tokens
        'Parameters: {"exposure": 10, "hue": 20, "contr',  # truncated inside a key
        "exposure: 10, hue: 20",
        'Parameters: {"exposure": "+10%", "hue": 20, "contrast": "a lot"}',
    ],
)
def test_messy_adjust_answers(text):
    parsed = parse_tool_output("adjust", text)
    assert parsed.ok, parsed.error
    assert parsed.part == adjust(exposure=10, hue=20)


def test_a_note_after_the_json_does_not_hide_it():
    text = 'TOOL: warm.\nJSON: {"temperature": 20}\nNote: other parameters: unchanged.'
    parsed = parse_tool_output("adjust", text)
    assert parsed.ok and parsed.part == adjust(temperature=20)


def test_out_of_range_values_are_clamped():
    parsed = parse_tool_output("adjust", '{"exposure": 250, "hue": -5, "bloom": -3, "tint": -1e9}')
    assert parsed.part == adjust(exposure=100, tint=-100)  # hue, bloom clamp to 0
    lut = parse_tool_output("filter", '{"name": "vivid", "intensity": 180}')
    assert lut.part == Filter("vivid", 100)


def test_linear_offset_spellings_map_to_the_canonical_key():
    for key in ("linearOffset", "linear_offset", "Linear Offset", "LINEAROFFSET"):
        assert parse_tool_output("adjust", f'{{"{key}": -7}}').part == adjust(linearOffset=-7)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "Parameters:", "Parameters: {}", "TOOL: No, not needed.\nJSON:\n{}", "none"],
)
def test_not_used_answers_are_not_failures(text):
    for tool in ("adjust", "selective_adjust"):
        parsed = parse_tool_output(tool, text)
        assert parsed.ok and parsed.part is None


def test_all_zero_means_tool_not_used():
    zero = json.dumps({k: 0 for k in ADJUST_ORDER})
    assert parse_tool_output("adjust", zero).part is None
    selective = json.dumps({c: {"saturation": 0, "luminance": 0} for c in COLORS})
    assert parse_tool_output("selective_adjust", selective).part is None


def test_selective_nested_flat_and_partial():
    text = (
        "Parameters: {'red': {'saturation': 20, 'Luminance': '-5'}, 'blue_luminance': -30,"
        " 'purple': {'saturation': 50}}"
    )
    parsed = parse_tool_output("selective_adjust", text)
    assert parsed.ok
    assert parsed.part.as_dict()["red"] == {"saturation": 20, "luminance": -5}
    assert parsed.part.as_dict()["blue"] == {"saturation": 0, "luminance": -30}
    assert any("purple" in note for note in parsed.notes)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name": "cyberpunck", "intensity": 80}', Filter("cyberpunk", 80)),
        ('{"name": "faded AL2", "intensity": "50"}', Filter("faded_AL2", 50)),
        ('{"name": "teal and orange 1", "intensity": 40}', Filter("teal_and_orange_1", 40)),
        ('{"Name": "Night Vision", "Intensity": 60.5}', Filter("night_vision", 60.5)),
        ('{"filter": {"name": "winter", "intensity": 80}}', Filter("winter", 80)),
        ('{"preset": "north", "strength": 45}', Filter("north", 45)),
        ("Parameters: vivid", Filter("vivid", 0)),
        ('{"name": "none", "intensity": 0}', None),
    ],
)
def test_filter_names(text, expected):
    parsed = parse_tool_output("filter", text)
    assert parsed.ok
    assert parsed.part == expected


def test_unknown_filter_name_is_a_parse_failure():
    parsed = parse_tool_output("filter", '{"name": "sparkly unicorn", "intensity": 70}')
    assert not parsed.ok and parsed.part is None and "sparkly unicorn" in parsed.error


@pytest.mark.parametrize(
    ("tool", "text"),
    [
        ("adjust", "I think the image should look warmer."),
        ("adjust", '{"red": {"saturation": 10}}'),
        ("selective_adjust", '{"exposure": {"value": 10}}'),
        ("filter", "I have no idea which preset fits."),
        ("filter", '{"intensity": "strong"}'),
        ("adjust", "[1, 2, 3]"),
    ],
)
def test_unusable_text_is_a_failure_not_an_exception(tool, text):
    parsed = parse_tool_output(tool, text)
    assert not parsed.ok and parsed.part is None and parsed.error


def test_parse_outputs_collects_failures_and_rationales():
    result = parse_outputs(
        {
            "adjust": 'TOOL: warm.\nJSON: {"temperature": 20}',
            "selective_adjust": "gibberish",
            "filter": None,
        }
    )
    assert result.config == ToolConfig(adjust=adjust(temperature=20))
    assert result.failures == ("selective_adjust",)
    assert result.rationales == {"adjust": "warm."}


def test_unknown_tool_raises_value_error():
    with pytest.raises(ValueError, match="^tool: "):
        parse_tool_output("curves", "{}")


def test_split_answer_and_extract_object_helpers():
    assert split_answer("TOOL: because.\nJSON: {}") == ("because.", "{}")
    assert split_answer('{"a": 1}') == ("", '{"a": 1}')
    assert extract_object("no braces here") is None
    assert extract_object('x {"a": {"b": "}"}} y') == {"a": {"b": "}"}}


# --- properties -------------------------------------------------------------------------------

adjust_parts = st.tuples(*(st.integers(int(lo), int(hi)) for lo, hi in ADJUST_RANGES.values())).map(
    lambda values: Adjust(tuple(float(v) for v in values))
)
selective_parts = st.tuples(*(st.integers(-100, 100) for _ in range(12))).map(
    lambda values: SelectiveAdjust(tuple(float(v) for v in values))
)
filter_parts = st.builds(Filter, st.sampled_from(FILTER_NAMES[1:]), st.integers(0, 100).map(float))
configs = st.builds(
    ToolConfig,
    adjust=st.none() | adjust_parts.filter(lambda a: any(a.values)),
    selective_adjust=st.none() | selective_parts.filter(lambda s: any(s.values)),
    filter=st.none() | filter_parts,
)


@given(configs)
def test_student_targets_round_trip(config):
    for tool in TOOLS:
        parsed = parse_tool_output(tool, student_target(tool, config))
        assert parsed.ok and parsed.part == getattr(config, tool)


def _mess_up(text: str, fence: bool, single_quotes: bool, trailing_comma: bool, shout: bool):
    if trailing_comma:
        text = text[:-1] + ",}"
    if single_quotes:
        text = text.replace('"', "'")
    if shout:
        text = text.replace("saturation", "Saturation").replace("intensity", "INTENSITY")
    if fence:
        text = f"Sure! Here are the values:\n```json\n{text}\n```\nEnjoy."
    return text


@given(
    configs,
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.text(alphabet="abc .,!\n", max_size=30),
)
def test_messy_teacher_answers_parse_to_the_same_config(
    config, fence, single_quotes, trailing_comma, shout, rationale
):
    for tool in TOOLS:
        body = student_target(tool, config).removeprefix("Parameters: ") or "{}"
        text = f"TOOL:\n{rationale}\nJSON:\n" + _mess_up(
            body, fence, single_quotes, trailing_comma and body != "{}", shout
        )
        parsed = parse_tool_output(tool, text)
        assert parsed.ok, (text, parsed.error)
        assert parsed.part == getattr(config, tool)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from([*ADJUST_ORDER, *COLORS, "name", "intensity", "saturation", "x"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=80)
@given(json_values)
def test_any_json_shape_gives_in_range_values_or_a_failure(value):
    text = "Parameters: " + json.dumps(value)
    for tool in TOOLS:
        parsed = parse_tool_output(tool, text)
        part = parsed.part
        if part is None:
            continue
        assert parsed.ok
        if isinstance(part, Adjust):
            for (low, high), v in zip(ADJUST_RANGES.values(), part.values, strict=True):
                assert low <= v <= high
        elif isinstance(part, SelectiveAdjust):
            assert all(-100 <= v <= 100 for v in part.values)
        else:
            assert part.name in FILTER_NAMES[1:]
            assert INTENSITY_RANGE[0] <= part.intensity <= INTENSITY_RANGE[1]


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(text):
    result = parse_outputs({tool: text for tool in TOOLS})
    assert isinstance(result.config, ToolConfig)
    assert set(result.failures) <= set(TOOLS)
