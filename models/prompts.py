"""The paper's prompt texts: three teacher chain-of-thought prompts and three student prompts.

Teacher (appendix figures 3-5, GPT-3.5-Turbo): a one-shot prompt per tool whose answer is
``TOOL: <rationale> JSON: {...}``. The one-shot example is sent as a user/assistant pair so
that the real request is the last user message.

Student (appendix figures 9-11, Llama-2-7b-chat-hf / FlanT5): one prompt per tool whose answer
is ``Parameters: {...}``. `student_prompt` returns the text between the Llama-2 ``[INST]``
markers included; the ``<s>`` BOS token of the figures is left to the tokenizer.

Deliberate differences from the paper's figures:
- LUT names use the canonical spelling of `models.tools.FILTER_NAMES` (the paper writes
  "faded AL2", "teal and orange 1" twice and "teal and orange 2/3" with spaces).
- The student filter prompt lists every preset in `FILTER_NAMES`; figure 11 lists only 24 of
  them, yet the teacher (and so the training targets) uses all 34.
- The user request is the raw intent (the figures' one-shot examples read "a golden hour filter
  look"; we keep the examples verbatim but do not rewrite the user's intent).

Training targets (`student_target`), documented once here and relied on by distillation:
- adjust: ``Parameters: {"exposure": 0, ...}`` with all 14 parameters in `ADJUST_ORDER`;
  selective_adjust: ``Parameters: {"red": {"saturation": 0, "luminance": 0}, ...}`` with all
  six colors in `COLORS` order; filter: ``Parameters: {"name": "vivid", "intensity": 60}``.
- An unused adjust or selective_adjust tool has the EMPTY STRING as its target, exactly as
  figures 9 and 10 say ("Otherwise, write an empty string"); `models.parsing` reads an empty
  answer as "tool not used" (not a parse failure).
- An unused filter is ``Parameters: {"name": "none", "intensity": 0}`` (figure 11: "If there's
  no close match, choose 'none'").
- Numbers are written as integers when integral, otherwise rounded to one decimal.
"""

from __future__ import annotations

import json
import re
from typing import Any

from models.tools import ADJUST_ORDER, COLORS, FILTER_NAMES, TOOLS, ToolConfig

PROMPTS_VERSION = "paper-v1"

_ROLE = (
    "You are a professional image and video editor. Your goal is to make the color adjust "
    "filters based on the user's request. The standard tools you can use are: global color "
    "grading tool which works globally on all colors, selective color grading (separate adjust "
    "for different color ranges) and LUT filter presets."
)
_SUGGEST = (
    "Suggest how to use these tools to achieve the requested look. The tools should be combined "
    "and work well when applied together."
)
_ADJUST_PARAMETERS = (
    '"exposure", "contrast", "brightness", "highlights", "shadows", "saturation", "vibrance", '
    '"temperature", "tint", "linearOffset" (values between -100 and 100), "hue" (values between '
    '0 and 360), and "bloom", "sharpen", "structure" (values between 0 and 100).'
)
_LUT_LIST = ", ".join(f'"{name}"' for name in FILTER_NAMES)

# --- Teacher (figures 3-5) -------------------------------------------------------------------

TEACHER_SYSTEM: dict[str, str] = {
    "adjust": (
        f"{_ROLE} {_SUGGEST} Write in TOOL whether you should use the color grading tool. "
        f"If yes, suggest how. PARAMETERS:\n\n{_ADJUST_PARAMETERS} Is the request asked to "
        'apply the look on a specific color range? If so then don\'t change the "hue" parameter '
        "of the global color grading. If all parameters are zero, then don't use this tool. If "
        "you decide to use the global color grading tool, write in JSON only parameters from "
        "PARAMETERS with their correct values. Otherwise, write an empty json.\n\n"
        "Inputs: USER_REQUEST\nOutputs: TOOL, JSON"
    ),
    "selective_adjust": (
        f'{_ROLE} {_SUGGEST} The parameters are: "red", "orange", "yellow", "green", '
        '"cyan", "blue". For each we have "saturation" and "luminance" (both between -100 and '
        "100). Write in TOOL whether you should use the selective color grading tool. If yes, "
        "suggest how. Write in JSON the parameters for selective color grading if you decide to "
        'use the selective color grading tool. You should write the colors ("red", "orange", '
        '"yellow", "green", "cyan", "blue"), and a value for each one of the "saturation", '
        '"luminance" parameters. If you decide to use the global color grading tool or LUT '
        "filter presets instead, write an empty json.\n\n"
        "Inputs: USER_REQUEST\nOutputs: TOOL, JSON"
    ),
    "filter": (
        f"{_ROLE} Available LUT presets are: {_LUT_LIST}. {_SUGGEST} Write in TOOL whether the "
        'LUT preset is suitable for the requested look. The default preset is "none". Only use '
        'other than "none" LUTs if you find a very close or exact preset. Otherwise use "none" '
        "preset. If duotone was not explicitly mentioned in the request, but you still choose "
        "to use a duotone filter, then use very low intensity of 15. Suggest a specific preset "
        "from the list. Try to find a preset name that is semantically close to the requested "
        "look. The closer the preset, the more intense it should be. If the semantic match is "
        'quite close, but not exact use intensity of around 40 to 60. For example for "cool '
        'morning" you can choose the presets named "north" or "winter" because both associated '
        "with cold, but the intensity should be low, about 40 to 60 because cool is not exactly "
        'north or winter. But if the request contains the word "winter" then you should choose '
        "the winter LUT with high intensity of around 80. Write in JSON the correct LUT filter "
        "preset from the available LUT presets, and the correct intensity between 0 and 100.\n\n"
        "Inputs: USER_REQUEST\nOutputs: TOOL, JSON"
    ),
}

TEACHER_EXAMPLE_REQUEST: dict[str, str] = {
    "adjust": "a golden hour filter look",
    "selective_adjust": "a golden hour filter look",
    "filter": "a welding mask filter look",
}

TEACHER_EXAMPLE_ANSWER: dict[str, str] = {
    "adjust": (
        "TOOL:\nYes, the global color grading tool should be used. The temperature should be "
        "increased to add a warm, golden tone to the image. The highlights and shadows should be "
        "adjusted to soften the image and mimic the diffused light of the golden hour. The "
        "saturation could also be increased to enhance the colors. The hue parameter should not "
        "be changed as the request does not specify a specific color range.\nJSON:\n"
        '{"exposure": 0, "contrast": 0, "brightness": 0, "highlights": 20, "shadows": -20, '
        '"saturation": 10, "vibrance": 0, "temperature": 30, "tint": 0, "hue": 0, "bloom": 0, '
        '"sharpen": 0, "structure": 0, "linearOffset": 0}'
    ),
    "selective_adjust": (
        "TOOL:\nYes, the selective color grading tool should be used. We would enhance the "
        "reds, oranges, and yellows to create the warm golden hour look. We would also slightly "
        "reduce the saturation and luminance of the blues and greens to make the warm colors "
        "stand out more.\nJSON:\n"
        '{"red": {"saturation": 20, "luminance": 10}, "orange": {"saturation": 30, '
        '"luminance": 20}, "yellow": {"saturation": 40, "luminance": 30}, "green": '
        '{"saturation": -20, "luminance": -10}, "cyan": {"saturation": -20, "luminance": -10}, '
        '"blue": {"saturation": -30, "luminance": -20}}'
    ),
    "filter": (
        'TOOL:\nThe "night_vision" LUT preset seems the most appropriate since night vision '
        'also tends to produce greenish images.\nJSON:\n{"name": "night_vision", "intensity": 60}'
    ),
}

_USER_REQUEST = "Inputs:\nUSER_REQUEST: {request}\nOutputs:"


def teacher_messages(tool: str, intent: str) -> list[dict[str, str]]:
    """OpenAI chat messages for the teacher prompt of `tool` (one-shot, chain of thought)."""
    _check_tool(tool)
    return [
        {"role": "system", "content": TEACHER_SYSTEM[tool]},
        {"role": "user", "content": _USER_REQUEST.format(request=TEACHER_EXAMPLE_REQUEST[tool])},
        {"role": "assistant", "content": TEACHER_EXAMPLE_ANSWER[tool]},
        {"role": "user", "content": _USER_REQUEST.format(request=_one_line(intent))},
    ]


# --- Student (figures 9-11) ------------------------------------------------------------------

_STUDENT_ROLE = (
    "You are a professional image and video editor. Your goal is to make the color adjust "
    "filters based on the users request. The standard tools you can use are: global color "
    "grading tool which works globally on all colors, selective color grading (separate adjust "
    "for different color ranges) and LUT filter presets. The tools should be combined and work "
    "well when applied together."
)
_TASK = (
    "Your task is to find the correct values for the parameters in order to achieve the "
    "user's request."
)

STUDENT_TEMPLATES: dict[str, str] = {
    "adjust": (
        f"[INST] {_STUDENT_ROLE} The list of parameters for global color grading is: "
        '"exposure", "contrast", "brightness", "highlights", "shadows", "saturation", '
        '"vibrance", "temperature", "tint", "linearOffset" (values between -100 and 100), "hue" '
        '(values between 0 and 360), "bloom", "sharpen", "structure" (values between 0 and '
        "100).\n\nThe user request is: {intent}.\n\n"
        f"{_TASK} Is the request asked to apply the look on a specific color range? If so then "
        'don\'t change the "hue" parameter of the global color grading. If all parameters are '
        "zero, then don't use this tool. If you decide to use the global color grading tool, "
        'write "Parameters:" with the name of the parameters and their correct values. '
        "Otherwise, write an empty string. [/INST]"
    ),
    "selective_adjust": (
        f"[INST] {_STUDENT_ROLE} The list of parameters for the selective color grading is: "
        '"red", "orange", "yellow", "green", "cyan", "blue". For each we have "saturation" and '
        '"luminance" (between -100 and 100).\n\nThe user request is: {intent}.\n\n'
        f'{_TASK} If you decide to use the selective color grading tool, write "Parameters:" '
        'with the colors ("red", "orange", "yellow", "green", "cyan", "blue"), and a value for '
        'each one of the "saturation", "luminance" parameters. Otherwise, write an empty '
        "string. [/INST]"
    ),
    "filter": (
        f"[INST] The list of LUT presets is: {_LUT_LIST}.\n\nThe user request is: {{intent}}."
        "\n\nYour task is to identify the LUT preset that is most semantically similar to the "
        "user's request.\n\nIn addition, choose an intensity from 0 to 100 (higher intensity "
        "indicates greater similarity to the request). If there's no close match, choose "
        '\'none\'.\n\nWrite "Parameters:", then write a json with two attributes "name" for '
        'your chosen LUT preset and "intensity" for its intensity. [/INST]'
    ),
}


def student_prompt(tool: str, intent: str) -> str:
    """The student prompt of `tool` for `intent` (figures 9-11, without the `<s>` token)."""
    _check_tool(tool)
    return STUDENT_TEMPLATES[tool].replace("{intent}", _one_line(intent))


def student_target(tool: str, config: ToolConfig) -> str:
    """The exact training target for `tool` given the teacher's `config` (see module doc)."""
    _check_tool(tool)
    part = getattr(config, tool)
    if tool == "filter":
        body: dict[str, Any] = (
            {"name": part.name, "intensity": _num(part.intensity)}
            if part is not None
            else {"name": "none", "intensity": 0}
        )
        return "Parameters: " + json.dumps(body)
    if part is None:
        return ""
    if tool == "adjust":
        body = {name: _num(v) for name, v in zip(ADJUST_ORDER, part.values, strict=True)}
    else:
        nested = part.as_dict()
        body = {c: {p: _num(v) for p, v in nested[c].items()} for c in COLORS}
    return "Parameters: " + json.dumps(body)


# --- Recognising a prompt (for the recorded server) ------------------------------------------

_MARKERS: tuple[tuple[str, str], ...] = (
    # most specific first: the adjust teacher marker is a substring-free phrase of its own
    ("selective_adjust", "whether you should use the selective color grading tool"),
    ("adjust", "whether you should use the color grading tool"),
    ("filter", "whether the LUT preset is suitable"),
    ("selective_adjust", "list of parameters for the selective color grading is"),
    ("adjust", "list of parameters for global color grading is"),
    ("filter", "The list of LUT presets is"),
)
_STUDENT_INTENT = re.compile(r"The user request is: (.*?)\.\s*\n\s*\nYour task", re.DOTALL)
_TEACHER_INTENT = re.compile(r"USER_REQUEST:[ \t]*(.*?)[ \t]*(?:\n|$)")


def detect_tool(prompt_text: str) -> tuple[str | None, str | None]:
    """Which tool and intent a teacher or student prompt is for; `(None, None)` if unknown.

    For chat prompts pass the message contents joined with newlines: the teacher's intent is
    the LAST ``USER_REQUEST:`` line (the first belongs to the one-shot example).
    """
    tool = next((t for t, marker in _MARKERS if marker in prompt_text), None)
    if tool is None:
        return None, None
    student = _STUDENT_INTENT.findall(prompt_text)
    if student:
        return tool, student[-1].strip()
    teacher = _TEACHER_INTENT.findall(prompt_text)
    if len(teacher) >= 2 or (teacher and teacher[-1] not in TEACHER_EXAMPLE_REQUEST.values()):
        return tool, teacher[-1].strip()
    return tool, None


def _check_tool(tool: str) -> None:
    if tool not in TOOLS:
        raise ValueError(f"tool: unknown tool {tool!r}; expected one of {TOOLS}")


def _one_line(intent: str) -> str:
    return " ".join(str(intent).split())


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(float(value), 1)
