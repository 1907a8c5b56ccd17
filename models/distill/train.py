"""Fine-tune a student on the paper's student prompts (section 3.2, appendix A.6).

One multi-task model for the three tools: every training intent gives three examples
(`student_prompt(tool, intent)` -> `student_target(tool, teacher_config)`).

- ``seq2seq`` (FlanT5-style): full fine-tune of an encoder-decoder.
- ``causal`` (Llama-style): LoRA through peft on a base model directory (r=64, alpha=64,
  dropout=0.05 as in A.6), 4-bit nf4 via bitsandbytes only when a GPU and bitsandbytes exist.

`base_model` is a local model directory (no hub access here). Without one, a small model is
built from scratch with a byte-level BPE tokenizer trained on the prompts and targets
(`TinyModelSpec`); that is how the demo student and the tests train on a CPU.

Optimiser settings default to appendix A.6: AdamW, lr 4e-5, constant schedule with 3% warm-up,
weight decay 0.001, max grad norm 0.3, batch 4 (eval batch 16), 10 epochs. After each evaluated
epoch the injected `evaluate` callable scores the test split (the CLI passes the offline metric
suite; models never import analysis); the best of the last three epochs by ``overall`` is kept.

The output directory is what `models.arms.local` loads: config + weights (or a LoRA adapter
whose `adapter_config.json` names the base), tokenizer files, `model_card.json` and `README.md`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from models.dataset import IntentRecord
from models.parsing import parse_outputs
from models.prompts import PROMPTS_VERSION, STUDENT_TEMPLATES, student_prompt, student_target
from models.tools import ADJUST_ORDER, COLOR_PARAMS, COLORS, TOOLS, ToolConfig

ARCHITECTURES = ("seq2seq", "causal")
CARD_NAME = "model_card.json"
SPECIAL_TOKENS = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>", "bos": "<s>"}

# evaluate(predictions, records, parse_failures) -> metrics with at least "overall".
Evaluator = Callable[
    [Sequence[ToolConfig], Sequence[IntentRecord], Sequence[tuple[str, ...]]], dict
]


class TrainError(ValueError):
    """Bad training input or settings; the message names the setting."""


@dataclass(frozen=True)
class TinyModelSpec:
    """A from-scratch model small enough for a 2-core CPU (used when no base model is given)."""

    vocab_size: int = 2000
    d_model: int = 128
    d_ff: int = 512
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1


@dataclass(frozen=True)
class TrainSettings:
    architecture: str = "seq2seq"
    base_model: str | None = None  # a local model directory; None: TinyModelSpec from scratch
    tiny: TinyModelSpec = field(default_factory=TinyModelSpec)
    epochs: int = 10
    learning_rate: float = 4e-5
    warmup_ratio: float = 0.03  # constant schedule after the warm-up
    weight_decay: float = 0.001
    max_grad_norm: float = 0.3
    batch_size: int = 4
    eval_batch_size: int = 16
    keep_best_of_last: int = 3
    evaluate_every_epoch: bool = True  # False: only the epochs that compete for "best"
    eval_limit: int | None = None  # score only the first N test rows (quick runs)
    max_source_tokens: int = 512
    max_target_tokens: int = 256
    max_new_tokens: int = 200
    lora_r: int = 64
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    load_in_4bit: bool | None = None  # None: when CUDA and bitsandbytes are both available
    seed: int = 0
    threads: int | None = None

    def check(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise TrainError(f"architecture: {self.architecture!r} is not one of {ARCHITECTURES}")
        for name in ("epochs", "batch_size", "eval_batch_size", "keep_best_of_last"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise TrainError(f"learning_rate: must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise TrainError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.base_model is not None and not Path(self.base_model).is_dir():
            raise TrainError(f"base_model: {self.base_model} is not a local model directory")


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    metrics: dict[str, Any] | None
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    path: Path
    best_epoch: int
    metrics: dict[str, Any] | None
    epochs: list[EpochResult]
    card: dict[str, Any]


# --- examples and data hash -------------------------------------------------------------------


def training_examples(records: Iterable[IntentRecord]) -> list[tuple[str, str]]:
    """(prompt, target) pairs: three per intent, one per tool (multi-task)."""
    return [
        (student_prompt(tool, r.intent), student_target(tool, r.teacher))
        for r in records
        for tool in TOOLS
    ]


def records_hash(records: Iterable[IntentRecord]) -> str:
    """SHA-256 of the records as `models.dataset.write_records` writes them."""
    digest = hashlib.sha256()
    for record in records:
        digest.update((json.dumps(record.to_json()) + "\n").encode())
    return digest.hexdigest()


# --- tokenizer and model construction ---------------------------------------------------------


def fixed_pieces() -> list[str]:
    """Text that every prompt or target repeats verbatim, one token each in a new tokenizer.

    The three prompt templates split around the intent, and the JSON skeleton of the targets
    (keys with their punctuation). The model still reads the exact paper prompt: its tokenizer
    just spends one token on each fixed stretch, which keeps a from-scratch model cheap on a CPU.
    """
    pieces: list[str] = []
    for template in STUDENT_TEMPLATES.values():
        pieces.extend(part for part in template.split("{intent}") if part)
    pieces.append('Parameters: {"' + ADJUST_ORDER[0] + '": ')
    pieces.extend(f', "{name}": ' for name in ADJUST_ORDER[1:])
    for index, color in enumerate(COLORS):
        opening = 'Parameters: {"' if index == 0 else '}, "'
        pieces.append(f'{opening}{color}": {{"{COLOR_PARAMS[0]}": ')
    pieces.append(f', "{COLOR_PARAMS[1]}": ')
    pieces += ["}}", "}", 'Parameters: {"name": "', '", "intensity": ']
    return pieces


def build_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained offline on `texts` (lossless decode).

    `fixed_pieces()` are added as whole tokens first; BPE learns the rest (intents, numbers,
    preset names) from `texts`.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = [SPECIAL_TOKENS[k] for k in ("pad", "eos", "unk", "bos")]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    pieces = fixed_pieces()
    core.add_tokens([AddedToken(p, normalized=False, single_word=False) for p in pieces])
    core.train_from_iterator(texts, trainer=trainer)
    core.add_tokens([AddedToken(p, normalized=False, single_word=False) for p in pieces])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=SPECIAL_TOKENS["pad"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        bos_token=SPECIAL_TOKENS["bos"],
    )


def tokenizer_corpus(records: Iterable[IntentRecord]) -> list[str]:
    """What a new tokenizer learns BPE merges from: intents and targets, minus fixed pieces."""
    pieces = sorted(fixed_pieces(), key=len, reverse=True)
    texts = []
    for record in records:
        texts.append(" ".join(record.intent.split()))
        for tool in TOOLS:
            target = student_target(tool, record.teacher)
            for piece in pieces:
                target = target.replace(piece, " ")
            texts.append(target)
    return texts


def _tiny_model(architecture: str, spec: TinyModelSpec, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    if architecture == "seq2seq":
        config = T5Config(
            vocab_size=len(tokenizer),
            d_model=spec.d_model,
            d_kv=spec.d_model // spec.heads,
            d_ff=spec.d_ff,
            num_layers=spec.layers,
            num_decoder_layers=spec.layers,
            num_heads=spec.heads,
            relative_attention_num_buckets=32,
            dropout_rate=spec.dropout,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        return T5ForConditionalGeneration(config)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.d_model,
        intermediate_size=spec.d_ff,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def _want_4bit(settings: TrainSettings) -> bool:
    import importlib.util

    import torch

    available = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None
    if settings.load_in_4bit is None:
        return available
    if settings.load_in_4bit and not available:
        raise TrainError("load_in_4bit: needs a CUDA GPU and the bitsandbytes package")
    return settings.load_in_4bit


def load_model(settings: TrainSettings, texts: Sequence[str]) -> tuple[Any, Any, bool]:
    """(model, tokenizer, uses_lora) for the settings: a base directory or a tiny new model."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if settings.base_model is None:
        tokenizer = build_tokenizer(texts, settings.tiny.vocab_size)
        return _tiny_model(settings.architecture, settings.tiny, tokenizer), tokenizer, False
    tokenizer = AutoTokenizer.from_pretrained(settings.base_model)
    if settings.architecture == "seq2seq":
        return AutoModelForSeq2SeqLM.from_pretrained(settings.base_model), tokenizer, False

    from peft import LoraConfig, get_peft_model

    kwargs: dict[str, Any] = {}
    if _want_4bit(settings):
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16
        )
        kwargs["device_map"] = "auto"
    model = AutoModelForCausalLM.from_pretrained(settings.base_model, **kwargs)
    if kwargs:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
    )
    return get_peft_model(model, lora), tokenizer, True


# --- batching ---------------------------------------------------------------------------------


def _encode_examples(
    examples: Sequence[tuple[str, str]], tokenizer: Any, settings: TrainSettings
) -> list[tuple[list[int], list[int]]]:
    """Token ids per example: (source, target) for seq2seq, (prompt, answer) for causal."""
    # Prompts get the tokenizer's own special tokens (T5: </s>, Llama: <s>), as at serving time.
    prompts = tokenizer([p for p, _ in examples])["input_ids"]
    answer_texts = [(t if settings.architecture == "seq2seq" else " " + t) for _, t in examples]
    answers = tokenizer(answer_texts, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for prompt, answer in zip(prompts, answers, strict=True):
        prompt = prompt[: settings.max_source_tokens]
        out.append((prompt, answer[: settings.max_target_tokens - 1] + [eos]))
    return out


def _collate(
    batch: Sequence[tuple[list[int], list[int]]], architecture: str, pad_id: int
) -> dict[str, Any]:
    import torch

    if architecture == "seq2seq":
        width = max(len(s) for s, _ in batch)
        label_width = max(len(t) for _, t in batch)
        ids = [s + [pad_id] * (width - len(s)) for s, _ in batch]
        mask = [[1] * len(s) + [0] * (width - len(s)) for s, _ in batch]
        labels = [t + [-100] * (label_width - len(t)) for _, t in batch]
    else:
        rows = [s + t for s, t in batch]
        width = max(len(r) for r in rows)
        ids = [r + [pad_id] * (width - len(r)) for r in rows]
        mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
        labels = [[-100] * len(s) + t + [-100] * (width - len(s) - len(t)) for s, t in batch]
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "labels": torch.tensor(labels),
    }


# --- generation and prediction ----------------------------------------------------------------


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    architecture: str,
    max_new_tokens: int = 200,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers for `prompts` (length-sorted batches, original order returned)."""
    import torch

    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    causal = architecture == "causal"
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        encoded = tokenizer([prompts[i] for i in chunk])["input_ids"]
        width = max(len(e) for e in encoded)
        pad = tokenizer.pad_token_id
        if causal:  # left padding so every row continues from its last prompt token
            ids = [[pad] * (width - len(e)) + e for e in encoded]
            mask = [[0] * (width - len(e)) + [1] * len(e) for e in encoded]
        else:
            ids = [e + [pad] * (width - len(e)) for e in encoded]
            mask = [[1] * len(e) + [0] * (width - len(e)) for e in encoded]
        input_ids = torch.tensor(ids, device=device)
        attention = torch.tensor(mask, device=device)
        with torch.no_grad():
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
        if causal:
            generated = generated[:, input_ids.shape[1] :]
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        for index, text in zip(chunk, texts, strict=True):
            out[index] = text.strip()
        if on_batch:
            on_batch(len(chunk))
    return out


def predict_configs(
    model: Any,
    tokenizer: Any,
    intents: Sequence[str],
    *,
    architecture: str,
    max_new_tokens: int = 200,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[ToolConfig], list[tuple[str, ...]]]:
    """Configs and parse-failure tools per intent: the three prompts in one batched pass."""
    prompts = [student_prompt(tool, intent) for intent in intents for tool in TOOLS]
    texts = generate_texts(
        model,
        tokenizer,
        prompts,
        architecture=architecture,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        on_batch=on_batch,
    )
    configs, failures = [], []
    for row in range(len(intents)):
        parsed = parse_outputs(dict(zip(TOOLS, texts[row * 3 : row * 3 + 3], strict=True)))
        configs.append(parsed.config)
        failures.append(parsed.failures)
    return configs, failures


# --- training ---------------------------------------------------------------------------------


def _advance(progress: Any, task: Any, n: int) -> None:
    progress.update(task, advance=n)


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def _save(model: Any, tokenizer: Any, path: Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ours are rich; keep stdout clean for --json
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def train_student(
    train_records: Sequence[IntentRecord],
    test_records: Sequence[IntentRecord],
    out_dir: str | Path,
    settings: TrainSettings | None = None,
    evaluate: Evaluator | None = None,
    *,
    show_progress: bool = True,
    extra_card: dict[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune, evaluate per epoch, keep the best of the last epochs; write the model dir."""
    import torch

    settings = settings or TrainSettings()
    settings.check()
    if settings.base_model is not None:  # the adapter config must name the base absolutely
        settings = replace(settings, base_model=str(Path(settings.base_model).resolve()))
    if not train_records:
        raise TrainError("train: the training set is empty")
    if evaluate is not None and not test_records:
        raise TrainError("test: the test set is empty; nothing to score epochs on")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise TrainError(f"out: {out} exists and is not empty; choose a new directory")
    threads_before = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _train(
            train_records, test_records, out, settings, evaluate, show_progress, extra_card
        )
    finally:
        torch.set_num_threads(threads_before)


def _train(
    train_records: Sequence[IntentRecord],
    test_records: Sequence[IntentRecord],
    out: Path,
    settings: TrainSettings,
    evaluate: Evaluator | None,
    show_progress: bool,
    extra_card: dict[str, Any] | None,
) -> TrainResult:
    import torch
    from transformers import get_constant_schedule_with_warmup

    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    started = time.perf_counter()

    eval_records = (
        list(test_records)[: settings.eval_limit] if settings.eval_limit else list(test_records)
    )
    examples = training_examples(train_records)
    with _progress(show_progress) as progress:
        data_task = progress.add_task("data", total=3, info="build tokenizer / model")
        model, tokenizer, uses_lora = load_model(settings, tokenizer_corpus(train_records))
        progress.update(data_task, advance=1, info="tokenize")
        encoded = _encode_examples(examples, tokenizer, settings)
        progress.update(data_task, advance=1, info=f"{len(encoded)} examples")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if not getattr(model, "is_loaded_in_4bit", False):
            model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        steps_per_epoch = math.ceil(len(encoded) / settings.batch_size)
        total_steps = steps_per_epoch * settings.epochs
        scheduler = get_constant_schedule_with_warmup(
            optimizer, num_warmup_steps=int(round(settings.warmup_ratio * total_steps))
        )
        progress.update(data_task, advance=1, info=f"{sum(p.numel() for p in params):,} trainable")

        competing = set(
            range(max(1, settings.epochs - settings.keep_best_of_last + 1), settings.epochs + 1)
        )
        checkpoints = out / "checkpoints"
        history: list[EpochResult] = []
        shuffler = random.Random(settings.seed)
        epoch_task = progress.add_task("epochs", total=settings.epochs, info="")
        for epoch in range(1, settings.epochs + 1):
            epoch_started = time.perf_counter()
            model.train()
            order = list(range(len(encoded)))
            shuffler.shuffle(order)
            step_task = progress.add_task(f"epoch {epoch}", total=steps_per_epoch, info="")
            loss_sum, loss_count = 0.0, 0
            for step in range(steps_per_epoch):
                batch = [
                    encoded[i]
                    for i in order[step * settings.batch_size : (step + 1) * settings.batch_size]
                ]
                inputs = {
                    k: v.to(device)
                    for k, v in _collate(
                        batch, settings.architecture, tokenizer.pad_token_id
                    ).items()
                }
                loss = model(**inputs).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss_sum += float(loss.detach())
                loss_count += 1
                progress.update(step_task, advance=1, info=f"loss {loss_sum / loss_count:.3f}")
            progress.remove_task(step_task)

            metrics = None
            if evaluate is not None and (settings.evaluate_every_epoch or epoch in competing):
                eval_task = progress.add_task(f"eval {epoch}", total=len(eval_records) * 3, info="")
                configs, failures = predict_configs(
                    model,
                    tokenizer,
                    [r.intent for r in eval_records],
                    architecture=settings.architecture,
                    max_new_tokens=settings.max_new_tokens,
                    batch_size=settings.eval_batch_size,
                    on_batch=partial(_advance, progress, eval_task),
                )
                metrics = evaluate(configs, eval_records, failures)
                progress.remove_task(eval_task)
            if epoch in competing:
                _save(model, tokenizer, checkpoints / f"epoch-{epoch}")
            result = EpochResult(
                epoch, loss_sum / max(loss_count, 1), metrics, time.perf_counter() - epoch_started
            )
            history.append(result)
            score_text = f"overall {metrics['overall']:.3f}" if metrics else ""
            progress.update(
                epoch_task, advance=1, info=f"loss {result.train_loss:.3f} {score_text}"
            )

    candidates = [h for h in history if h.epoch in competing]
    if evaluate is not None:
        best = max(candidates, key=lambda h: (float(h.metrics["overall"]), h.epoch))  # type: ignore[index]
    else:
        best = candidates[-1]
    for item in (checkpoints / f"epoch-{best.epoch}").iterdir():
        shutil.move(str(item), out / item.name)
    shutil.rmtree(checkpoints)

    card = {
        "kind": "local_student",
        "architecture": settings.architecture,
        "base_model": settings.base_model,
        "from_scratch": settings.base_model is None,
        "lora": uses_lora,
        "prompts_version": PROMPTS_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_seconds": round(time.perf_counter() - started, 1),
        "data": {
            "train_rows": len(train_records),
            "train_sha256": records_hash(train_records),
            "test_rows": len(eval_records),
            "test_sha256": records_hash(eval_records),
        },
        "settings": _settings_json(settings),
        "best_epoch": best.epoch,
        "metrics": best.metrics,
        "epochs": [asdict(h) for h in history],
        "parameters": sum(p.numel() for p in model.parameters()),
        **(extra_card or {}),
    }
    write_model_card(out, card)
    return TrainResult(out, best.epoch, best.metrics, history, card)


def _settings_json(settings: TrainSettings) -> dict[str, Any]:
    data = asdict(settings)
    if settings.base_model is not None:
        data.pop("tiny")
    return data


def settings_from_json(data: dict[str, Any]) -> TrainSettings:
    data = dict(data)
    tiny = TinyModelSpec(**data.pop("tiny")) if "tiny" in data else TinyModelSpec()
    return replace(TrainSettings(**data), tiny=tiny)


def write_model_card(path: Path, card: dict[str, Any]) -> None:
    """`model_card.json` (machine-readable) and a README.md rendering of it."""
    (path / CARD_NAME).write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")
    data = card["data"]
    lines = [
        f"# Student model ({card['architecture']})",
        "",
        f"- Base: {card['base_model'] or 'none (trained from scratch, tokenizer built offline)'}",
        f"- LoRA: {card['lora']}; parameters: {card['parameters']:,}",
        f"- Prompts: paper student prompts (version {card['prompts_version']})",
        f"- Train data: {data['train_rows']} intents, sha256 {data['train_sha256']}",
        f"- Test data: {data['test_rows']} intents, sha256 {data['test_sha256']}",
        f"- Best epoch (of the last {card['settings']['keep_best_of_last']}): {card['best_epoch']}",
        f"- Training time: {card['training_seconds']} s",
        "",
        "| epoch | train loss | overall | seconds |",
        "|---|---|---|---|",
    ]
    for epoch in card["epochs"]:
        overall = epoch["metrics"]["overall"] if epoch["metrics"] else None
        shown = f"{overall:.3f}" if overall is not None else "-"
        lines.append(
            f"| {epoch['epoch']} | {epoch['train_loss']:.4f} | {shown} | {epoch['seconds']:.0f} |"
        )
    lines += ["", "## Settings", "", "```json", json.dumps(card["settings"], indent=2), "```", ""]
    if card.get("metrics"):
        lines += ["## Metrics of the kept epoch", "", "```json"]
        lines += [json.dumps(card["metrics"], indent=2, default=str), "```", ""]
    (path / "README.md").write_text("\n".join(lines), encoding="utf-8")


def read_model_card(path: str | Path) -> dict[str, Any]:
    card_path = Path(path) / CARD_NAME
    if not card_path.is_file():
        raise TrainError(f"path: {path} has no {CARD_NAME}; not a trained student directory")
    return json.loads(card_path.read_text(encoding="utf-8"))


def load_student(path: str | Path) -> tuple[Any, Any, str]:
    """(model, tokenizer, architecture) from a directory written by `train_student`."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    card = read_model_card(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if card["architecture"] == "seq2seq":
        model = AutoModelForSeq2SeqLM.from_pretrained(str(path))
    elif card.get("lora"):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(path))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path))
    model.eval()
    return model, tokenizer, card["architecture"]


class StudentPredictor:
    """A trained student directory as `intents -> configs` (for augmentation and studies)."""

    def __init__(
        self, path: str | Path, *, batch_size: int = 64, max_new_tokens: int = 200
    ) -> None:
        self.model, self.tokenizer, self.architecture = load_student(path)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.last_failures: list[tuple[str, ...]] = []

    def __call__(self, intents: Sequence[str]) -> list[ToolConfig]:
        configs, self.last_failures = predict_configs(
            self.model,
            self.tokenizer,
            intents,
            architecture=self.architecture,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
        )
        return configs


def cached_model_dir(
    bundled: Path,
    bundled_matches: Callable[[dict[str, Any]], bool],
    cache_dir: str | Path,
    name: str,
    train: Callable[[Path], object],
) -> Path:
    """A trained model directory: the committed copy at `bundled` when its card matches, else
    `cache_dir/name` (trained once: `train(scratch)` writes into a scratch directory that is
    renamed into place only when training finished)."""
    if (bundled / CARD_NAME).is_file() and bundled_matches(read_model_card(bundled)):
        return bundled
    cache = Path(cache_dir)
    target = cache / name
    if (target / CARD_NAME).is_file():
        return target
    scratch = cache / f".training-{name}"
    if scratch.exists():
        shutil.rmtree(scratch)
    cache.mkdir(parents=True, exist_ok=True)
    train(scratch)
    scratch.rename(target)
    return target
