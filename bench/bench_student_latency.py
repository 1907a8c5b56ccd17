"""Local student latency on this CPU: the three tool prompts in ONE batched `generate` call
versus three sequential calls, through `models.arms.local.LocalStudentArm`.

The model is a randomly initialised T5 with the t5-small shape (d_model 512, 6+6 layers, 8 heads,
d_ff 2048, vocabulary 32,128: ~60M parameters; `--size base` gives the FlanT5-base shape,
~250M, like the paper's student). Random weights generate nonsense and may stop early, so every
call is forced to decode a realistic number of tokens: the median length of the bundled test
split's student targets for that tool (`models.prompts.student_target`), with a tokenizer
(byte-level BPE) trained offline on the student prompts and targets. In one batched call all
rows decode until the longest tool is done; sequential calls each decode their own length.

    python bench/bench_student_latency.py [--intents 12] [--size small|base] [--threads N]

Prints p50/p95 per intent for both ways, the sequential/batched ratio from the same run, and
the paper's figures for comparison (1.38 s FlanT5-base on an L4 GPU, 1.63 s Llama-2-7b on an
A100; both for all three tools of one intent).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

from models.dataset import load_split
from models.prompts import student_prompt, student_target
from models.tools import TOOLS

PAPER_SECONDS = {"FlanT5-base on an NVIDIA L4": 1.38, "Llama-2-7b on an NVIDIA A100": 1.63}
SIZES = {
    "small": {"d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_heads": 8},
    "base": {"d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12, "num_heads": 12},
}


def build_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for record in load_split("train")[:400]:
        for tool in TOOLS:
            texts += [student_prompt(tool, record.intent), student_target(tool, record.teacher)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8000,
        special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(directory)
    return fast


def build_model(directory: Path, size: str) -> int:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=32128,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        feed_forward_proj="gated-gelu" if size == "base" else "relu",
        **SIZES[size],
    )
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def target_lengths(tokenizer) -> dict[str, int]:
    """Median tokens of the student targets per tool, over the rows that use the tool."""
    lengths: dict[str, list[int]] = {tool: [] for tool in TOOLS}
    for record in load_split("test"):
        for tool in TOOLS:
            if record.teacher.uses(tool):
                text = student_target(tool, record.teacher)
                lengths[tool].append(len(tokenizer(text).input_ids) + 1)  # + </s>
    return {tool: int(statistics.median(v)) for tool, v in lengths.items()}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--intents", type=int, default=12, help="intents timed (after 1 warmup)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    console = Console()

    import torch

    from models.arms.local import LocalStudentArm
    from models.parsing import parse_outputs

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        tokenizer = build_tokenizer(directory)
        parameters = build_model(directory, args.size)
        lengths = target_lengths(tokenizer)
        arm = LocalStudentArm(directory, name="bench-t5", torch_threads=args.threads)
        longest = max(lengths.values())
        intents = [r.intent for r in load_split("test")[: args.intents + 1]]
        prompt_tokens = {
            tool: int(statistics.median(len(tokenizer(student_prompt(tool, i)).input_ids)
                                        for i in intents))
            for tool in TOOLS
        }  # fmt: skip
        console.print(
            f"model: random T5 ({args.size} shape), {parameters / 1e6:.1f}M parameters, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"prompt tokens {prompt_tokens}; forced new tokens {lengths}"
        )

        batched_s: list[float] = []
        sequential_s: list[float] = []
        for index, intent in enumerate(track(intents, description="timing", console=console)):
            started = time.perf_counter()
            prompts = [student_prompt(tool, intent) for tool in TOOLS]
            texts, _, _ = arm.generate_texts(
                prompts, max_new_tokens=longest, min_new_tokens=longest
            )
            parse_outputs(dict(zip(TOOLS, texts, strict=True)))
            batched = time.perf_counter() - started

            started = time.perf_counter()
            outputs = {}
            for tool in TOOLS:
                n = lengths[tool]
                texts, _, _ = arm.generate_texts(
                    [student_prompt(tool, intent)], max_new_tokens=n, min_new_tokens=n
                )
                outputs[tool] = texts[0]
            parse_outputs(outputs)
            sequential = time.perf_counter() - started
            if index == 0:
                continue  # warm-up
            batched_s.append(batched)
            sequential_s.append(sequential)

    table = Table(title=f"Local student, all three tools per intent ({len(batched_s)} intents)")
    for column in ("way", "p50 (s)", "p95 (s)", "mean (s)"):
        table.add_column(column)
    for name, values in (
        ("one batched generate (3 prompts)", batched_s),
        ("three sequential generates", sequential_s),
    ):
        table.add_row(
            name,
            f"{percentile(values, 50):.3f}",
            f"{percentile(values, 95):.3f}",
            f"{statistics.mean(values):.3f}",
        )
    console.print(table)
    ratio = statistics.median(sequential_s) / statistics.median(batched_s)
    console.print(f"sequential / batched (median, same run): [bold]{ratio:.2f}x[/]")
    for what, seconds in PAPER_SECONDS.items():
        console.print(f"paper: {seconds:.2f} s per intent, {what}")


if __name__ == "__main__":
    main()
