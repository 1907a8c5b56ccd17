"""A student run in-process with transformers: seq2seq (FlanT5-style) or causal (Llama-style).

The model comes from a local directory (no hub access): a seq2seq or causal model saved with
`save_pretrained` plus its tokenizer, optionally with a peft LoRA adapter directory on top
(``adapter_path``; or `path` itself is an adapter directory whose ``adapter_config.json`` names
the base model directory). The three tool prompts of one intent (figures 9-11) go through ONE
batched ``generate`` call; `predict_batch` puts several intents in the same call
(``batch_size`` prompts at a time). Greedy decoding, like the paper's temperature 0.

torch and transformers are imported lazily, so importing this module is cheap.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.arms.base import ArmError, Prediction
from models.parsing import parse_outputs
from models.prompts import student_prompt
from models.tools import TOOLS

KINDS = ("auto", "seq2seq", "causal")


class LocalStudentArm:
    """A transformers student from a local directory, on CPU or CUDA."""

    def __init__(
        self,
        path: str | Path,
        *,
        name: str = "local-student",
        kind: str = "auto",
        adapter_path: str | Path | None = None,
        device: str = "cpu",
        max_new_tokens: int = 256,
        batch_size: int = 24,
        merge_adapter: bool = True,
        torch_threads: int | None = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind: must be one of {KINDS}, got {kind!r}")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens: must be at least 1")
        if batch_size < 1:
            raise ValueError("batch_size: must be at least 1")
        self.name = name
        self.path = Path(path)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.parse_failure_counts: Counter[str] = Counter()
        self.generate_calls = 0
        self.generation_kwargs = dict(generation_kwargs or {})
        self._lock = threading.Lock()
        self._load(kind, adapter_path, device, merge_adapter, torch_threads)

    def _load(
        self,
        kind: str,
        adapter_path: str | Path | None,
        device: str,
        merge_adapter: bool,
        torch_threads: int | None,
    ) -> None:
        import torch
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForSeq2SeqLM,
            AutoTokenizer,
        )

        if torch_threads:
            torch.set_num_threads(torch_threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device: CUDA was requested but is not available")
        base_path = self.path
        if adapter_path is None and (self.path / "adapter_config.json").exists():
            adapter_path = self.path
            base_path = Path(_adapter_base(self.path))
        if not (base_path / "config.json").exists():
            raise ValueError(f"path: {base_path} holds no saved model (config.json missing)")
        config = AutoConfig.from_pretrained(base_path)
        if kind == "auto":
            kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
        self.kind = kind
        loader = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        # safetensors only: a pickled checkpoint (pytorch_model.bin) can run code when loaded
        model = loader.from_pretrained(base_path, use_safetensors=True)
        if adapter_path is not None:
            from peft import PeftModel

            if not (Path(adapter_path) / "adapter_model.safetensors").is_file():
                raise ValueError(
                    f"adapter_path: {adapter_path} holds no adapter_model.safetensors "
                    "(only safetensors are loaded)"
                )

            model = PeftModel.from_pretrained(model, str(adapter_path))
            if merge_adapter:
                model = model.merge_and_unload()
        tokenizer_dir = base_path if (base_path / "tokenizer_config.json").exists() else self.path
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if kind == "causal":
            tokenizer.padding_side = "left"  # generation continues the right end of each row
        self.device = device
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self._torch = torch

    def generate_texts(
        self, prompts: Sequence[str], **overrides: Any
    ) -> tuple[list[str], int, int]:
        """Generate for `prompts` in ONE `generate` call; returns (texts, prompt, new tokens).

        `overrides` (and the arm's `generation_kwargs`) go to `generate`, e.g. `num_beams`."""
        torch = self._torch
        encoded = self.tokenizer(list(prompts), padding=True, return_tensors="pt")
        encoded = {k: v.to(self.device) for k, v in encoded.items() if k != "token_type_ids"}
        with self._lock, torch.inference_mode():
            self.generate_calls += 1
            options: dict[str, Any] = {
                "max_new_tokens": self.max_new_tokens,
                "do_sample": False,
                "num_beams": 1,
                "pad_token_id": self.tokenizer.pad_token_id,
                **self.generation_kwargs,
                **overrides,
            }
            output = self.model.generate(**encoded, **options)
        if self.kind == "causal":
            output = output[:, encoded["input_ids"].shape[1] :]
        pad = self.tokenizer.pad_token_id
        new_tokens = int((output != pad).sum()) if pad is not None else int(output.numel())
        texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        return [t.strip() for t in texts], int(encoded["attention_mask"].sum()), new_tokens

    def predict_sync(self, intents: Sequence[str]) -> list[Prediction]:
        predictions: list[Prediction] = []
        per_call = max(1, self.batch_size // len(TOOLS))
        for start in range(0, len(intents), per_call):
            chunk = intents[start : start + per_call]
            prompts = [student_prompt(tool, intent) for intent in chunk for tool in TOOLS]
            started = time.perf_counter()
            try:
                texts, prompt_tokens, new_tokens = self.generate_texts(prompts)
            except Exception as exc:  # noqa: BLE001 - a model failure is an arm failure
                raise ArmError(f"local student {self.name} failed: {exc}") from exc
            elapsed = (time.perf_counter() - started) * 1000
            for offset in range(len(chunk)):
                rows = texts[offset * len(TOOLS) : (offset + 1) * len(TOOLS)]
                parsed = parse_outputs(dict(zip(TOOLS, rows, strict=True)))
                self.parse_failure_counts.update(parsed.failures)
                predictions.append(
                    Prediction(
                        parsed.config,
                        latency_ms=elapsed,  # every intent of a call waits for the whole call
                        prompt_tokens=prompt_tokens // len(chunk),
                        completion_tokens=new_tokens // len(chunk),
                        raw=dict(zip(TOOLS, rows, strict=True)),
                        parse_failures=parsed.failures,
                        repairs=parsed.repairs,
                    )
                )
        return predictions

    async def predict(self, intent: str) -> Prediction:
        return (await self.predict_batch([intent]))[0]

    async def predict_batch(self, intents: Sequence[str]) -> list[Prediction]:
        """Generation runs in a worker thread so the event loop stays responsive."""
        return await asyncio.to_thread(self.predict_sync, list(intents))


def _adapter_base(adapter_dir: Path) -> str:
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"adapter_path: {adapter_dir} names no base_model_name_or_path")
    return base


def describe_model(arm: LocalStudentArm) -> dict[str, Any]:
    """Kind, parameter count and device, for logs and the benchmark."""
    parameters = sum(p.numel() for p in arm.model.parameters())
    return {"kind": arm.kind, "parameters": parameters, "device": arm.device}
