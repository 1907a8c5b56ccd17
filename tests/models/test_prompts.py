"""The paper's prompts, the student targets and prompt recognition."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.dataset import load_split
from models.parsing import parse_tool_output
from models.prompts import (
    TEACHER_SYSTEM,
    detect_tool,
    student_prompt,
    student_target,
    teacher_messages,
)
from models.tools import ADJUST_ORDER, COLORS, FILTER_NAMES, TOOLS, Filter, ToolConfig


def _joined(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


def test_teacher_messages_are_one_shot_chat_with_the_intent_last():
    for tool in TOOLS:
        messages = teacher_messages(tool, "  Golden   hour ")
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
        assert messages[-1]["content"].endswith("USER_REQUEST: Golden hour\nOutputs:")
        assert "TOOL:" in messages[2]["content"] and "JSON:" in messages[2]["content"]


def test_teacher_one_shot_answers_parse_to_the_paper_values():
    adjust = parse_tool_output("adjust", teacher_messages("adjust", "x")[2]["content"])
    assert adjust.ok and adjust.part.as_dict()["temperature"] == 30
    assert adjust.part.as_dict()["shadows"] == -20
    selective = parse_tool_output(
        "selective_adjust", teacher_messages("selective_adjust", "x")[2]["content"]
    )
    assert selective.part.as_dict()["yellow"] == {"saturation": 40, "luminance": 30}
    lut = parse_tool_output("filter", teacher_messages("filter", "x")[2]["content"])
    assert lut.part == Filter("night_vision", 60)
    assert "greenish" in lut.rationale


def test_prompts_use_canonical_lut_names_only():
    for text in (TEACHER_SYSTEM["filter"], student_prompt("filter", "x")):
        for name in FILTER_NAMES:
            assert f'"{name}"' in text
        assert "faded AL2" not in text and "teal and orange" not in text


def test_student_prompts_follow_figures_9_to_11():
    adjust = student_prompt("adjust", "golden hour")
    assert adjust.startswith("[INST] You are a professional image and video editor.")
    assert adjust.endswith("[/INST]")
    assert "The user request is: golden hour.\n\n" in adjust
    assert 'write "Parameters:"' in adjust and "Otherwise, write an empty string." in adjust
    assert '"luminance" (between -100 and 100)' in student_prompt("selective_adjust", "x")
    assert "If there's no close match, choose 'none'." in student_prompt("filter", "x")


def test_student_targets_for_used_and_unused_tools():
    record = next(r for r in load_split("train") if r.intent == "monochrome green")
    adjust = student_target("adjust", record.teacher)
    assert adjust.startswith("Parameters: {")
    assert list(json.loads(adjust.removeprefix("Parameters: "))) == list(ADJUST_ORDER)
    selective = json.loads(student_target("selective_adjust", record.teacher)[12:])
    assert list(selective) == list(COLORS) and selective["red"] == {
        "saturation": -80,
        "luminance": 0,
    }
    assert student_target("filter", record.teacher) == (
        'Parameters: {"name": "duotone_green", "intensity": 15}'
    )
    empty = ToolConfig()
    assert student_target("adjust", empty) == ""
    assert student_target("selective_adjust", empty) == ""
    assert student_target("filter", empty) == 'Parameters: {"name": "none", "intensity": 0}'
    fractional = ToolConfig(filter=Filter("vivid", 33.333))
    assert student_target("filter", fractional) == (
        'Parameters: {"name": "vivid", "intensity": 33.3}'
    )


def test_student_targets_parse_back_to_the_teacher_config_on_the_whole_test_split():
    for record in load_split("test"):
        parsed = {
            tool: parse_tool_output(tool, student_target(tool, record.teacher)) for tool in TOOLS
        }
        assert all(p.ok for p in parsed.values())
        rebuilt = ToolConfig(**{tool: parsed[tool].part for tool in TOOLS})
        assert rebuilt == record.teacher, record.intent


def test_unknown_tool_is_a_value_error_naming_the_field():
    for make in (teacher_messages, student_prompt):
        with pytest.raises(ValueError, match="^tool: "):
            make("curves", "x")
    with pytest.raises(ValueError, match="^tool: "):
        student_target("curves", ToolConfig())


@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40
    ).filter(lambda s: s.strip())
)
def test_detect_tool_recovers_tool_and_intent_from_any_prompt(intent):
    expected = " ".join(intent.split())
    for tool in TOOLS:
        assert detect_tool(student_prompt(tool, intent)) == (tool, expected)
        assert detect_tool(_joined(teacher_messages(tool, intent))) == (tool, expected)


def test_detect_tool_on_foreign_text_and_on_the_chat_student_form():
    assert detect_tool("What is the capital of France?") == (None, None)
    chat = student_prompt("filter", "winter").removeprefix("[INST] ").removesuffix(" [/INST]")
    assert detect_tool(chat) == ("filter", "winter")
    only_example = teacher_messages("adjust", "x")[:3]
    assert detect_tool(_joined(only_example)) == ("adjust", None)
