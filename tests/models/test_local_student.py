"""The local transformers student with tiny models created here (no hub, no network)."""

from __future__ import annotations

import json

import pytest

from models.arms.base import Prediction
from models.prompts import student_prompt
from models.tools import TOOLS, ToolConfig
from tests.models.tiny_models import make_llama, make_lora_adapter, make_t5

pytestmark = pytest.mark.ml

INTENTS = ["golden hour", "monochrome green", "cyberpunk city at night"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return make_t5(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory):
    base = make_llama(tmp_path_factory.mktemp("llama"))
    adapter = make_lora_adapter(base, tmp_path_factory.mktemp("lora"))
    return base, adapter


def _single(arm, prompt: str) -> str:
    texts, _, _ = arm.generate_texts([prompt])
    return texts[0]


async def test_seq2seq_student_answers_three_tools_in_one_generate_call(t5_dir):
    from models.arms.local import LocalStudentArm, describe_model

    arm = LocalStudentArm(t5_dir, name="tiny-t5", max_new_tokens=6)
    assert arm.kind == "seq2seq"
    assert describe_model(arm)["parameters"] > 0
    prediction = await arm.predict("golden hour")
    assert isinstance(prediction, Prediction)
    assert arm.generate_calls == 1
    assert set(prediction.raw) == set(TOOLS)
    assert isinstance(prediction.config, ToolConfig)
    assert prediction.prompt_tokens > 100 and prediction.completion_tokens > 0
    # batching with padding gives the same greedy text as one prompt at a time
    for tool in TOOLS:
        assert prediction.raw[tool] == _single(arm, student_prompt(tool, "golden hour"))
    # a random model does not write "Parameters: {...}": those tools are parse failures, counted
    assert sum(arm.parse_failure_counts.values()) == len(prediction.parse_failures)


async def test_predict_batch_puts_several_intents_in_one_call(t5_dir):
    from models.arms.local import LocalStudentArm

    arm = LocalStudentArm(t5_dir, max_new_tokens=4, batch_size=9)
    batch = await arm.predict_batch(INTENTS)
    assert arm.generate_calls == 1
    assert len(batch) == 3
    one_by_one = [await arm.predict(i) for i in INTENTS]
    assert [p.raw for p in batch] == [p.raw for p in one_by_one]
    small = LocalStudentArm(t5_dir, max_new_tokens=4, batch_size=3)
    await small.predict_batch(INTENTS)
    assert small.generate_calls == 3


async def test_causal_student_with_lora_adapter(llama_dirs):
    from models.arms.local import LocalStudentArm

    base_dir, adapter_dir = llama_dirs
    base = LocalStudentArm(base_dir, max_new_tokens=5)
    assert base.kind == "causal" and base.tokenizer.padding_side == "left"
    with_adapter = LocalStudentArm(base_dir, adapter_path=adapter_dir, max_new_tokens=5)
    # the adapter directory alone also works: adapter_config.json names the base directory
    from_adapter_dir = LocalStudentArm(adapter_dir, max_new_tokens=5, merge_adapter=False)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 4

    plain = await base.predict("monochrome green")
    adapted = await with_adapter.predict("monochrome green")
    again = await from_adapter_dir.predict("monochrome green")
    assert with_adapter.generate_calls == 1
    assert adapted.raw == again.raw  # merged and unmerged adapters agree
    assert adapted.raw != plain.raw  # the adapter changes what the model writes
    # left padding: batched greedy output equals one prompt at a time
    for tool in TOOLS:
        assert adapted.raw[tool] == _single(with_adapter, student_prompt(tool, "monochrome green"))


def test_bad_paths_and_options_are_value_errors(tmp_path, t5_dir):
    from models.arms.local import LocalStudentArm

    with pytest.raises(ValueError, match="^path: "):
        LocalStudentArm(tmp_path)
    with pytest.raises(ValueError, match="^kind: "):
        LocalStudentArm(t5_dir, kind="encoder-only")
    with pytest.raises(ValueError, match="^max_new_tokens: "):
        LocalStudentArm(t5_dir, max_new_tokens=0)


def test_cuda_request_without_cuda_is_a_clear_error(t5_dir):
    import torch

    from models.arms.local import LocalStudentArm

    if torch.cuda.is_available():
        arm = LocalStudentArm(t5_dir, device="cuda", max_new_tokens=2)
        assert arm.device == "cuda"
    else:
        with pytest.raises(ValueError, match="^device: CUDA"):
            LocalStudentArm(t5_dir, device="cuda")


def test_a_pickled_checkpoint_is_never_loaded(tmp_path, t5_dir):
    """Only safetensors: a directory holding pytorch_model.bin (a pickle) is refused."""
    import shutil

    import torch
    from transformers import T5ForConditionalGeneration

    from models.arms.local import LocalStudentArm

    pickled = tmp_path / "pickled"
    shutil.copytree(t5_dir, pickled)
    model = T5ForConditionalGeneration.from_pretrained(t5_dir)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises((OSError, ValueError)):
        LocalStudentArm(pickled)
