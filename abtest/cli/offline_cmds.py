"""`abtest evaluate` and `abtest gate`: the paper's offline metrics and the promotion gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from abtest import promotion
from abtest.cli.common import JSON_OPTION, console, fail, print_json, session, settings
from analysis import offline_metrics
from analysis.gate_policy import GatePolicy, PolicyError, policy_named_or_file
from analysis.offline_io import match_files
from models.dataset import DatasetError

SUBSETS_OPTION = typer.Option(False, "--subsets", help="Also score the r3 and r5 subsets.")


def _scores_table(title: str, scores: offline_metrics.OfflineScores, ci: Any = None) -> Table:
    table = Table(title=title)
    for column in ("tool", "prec.", "recall", "select.", "quality", "final", "95% CI"):
        table.add_column(column, no_wrap=True)
    for tool, s in scores.tools.items():
        interval = ci.finals[tool] if ci is not None else None
        table.add_row(
            tool,
            f"{s.precision:.3f}",
            f"{s.recall:.3f}",
            f"{s.selection:.3f}",
            f"{s.quality:.3f}",
            f"{s.final:.3f}",
            f"{interval.low:.3f}..{interval.high:.3f}" if interval else "",
        )
    overall_ci = f"{ci.overall.low:.3f}..{ci.overall.high:.3f}" if ci is not None else ""
    table.add_row("overall", "", "", "", "", f"{scores.overall:.3f}", overall_ci)
    return table


def _print_scores(
    subsets: dict[str, offline_metrics.OfflineScores], ci: offline_metrics.BootstrapResult
) -> None:
    for name, scores in subsets.items():
        title = f"{name}: {scores.n} intents, parse failures {scores.parse_failure_rate:.1%}"
        console.print(_scores_table(title, scores, ci if name == "all" else None))


def evaluate(
    predictions: Path = typer.Option(
        None, "--predictions", help="Predictions, JSON Lines in the dataset's record format."
    ),
    truth: Path = typer.Option(None, "--truth", help="Ground truth in the same format."),
    variant: str = typer.Option(None, "--variant", help="Run this registered variant instead."),
    test_set: Path = typer.Option(
        None, "--test-set", help="Test set for --variant (default: the bundled test split)."
    ),
    subsets: bool = SUBSETS_OPTION,
    resamples: int = typer.Option(
        1000, "--resamples", min=100, max=100_000, help="Bootstrap resamples."
    ),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Score predictions with the paper's offline metrics (files, or a registered variant)."""
    thresholds = offline_metrics.SUBSET_THRESHOLDS if subsets else (1,)
    if variant is not None:
        if predictions is not None or truth is not None:
            fail("--variant: use either --variant or --predictions/--truth, not both")
        try:
            policy = GatePolicy(bootstrap_resamples=resamples, bootstrap_seed=seed)
        except PolicyError as exc:
            fail(f"--{exc.field.replace('bootstrap_', '')}: {exc.reason}")
        with session() as s:
            result = promotion.evaluate_variant(
                s, variant, test_set, progress=not as_json, policy=policy, settings=settings()
            )
        shown = {k: v for k, v in result.subsets.items() if k in _names(thresholds)}
        if as_json:
            data = result.as_dict()
            data["subsets"] = {k: v.as_dict() for k, v in shown.items()}
            print_json(data)
        else:
            _print_scores(shown, result.bootstrap)
            p95 = result.run.latency_p95_ms
            typer.echo(f"p95 latency: {p95:.1f} ms" if p95 is not None else "p95 latency: n/a")
        return
    if predictions is None or truth is None:
        fail("--predictions and --truth are both required (or give --variant NAME)")
    if test_set is not None:
        fail("--test-set: only used with --variant")
    try:
        matched = match_files(predictions, truth)
    except DatasetError as exc:
        fail(str(exc))
    encoded_pred = offline_metrics.encode(matched.predictions)
    encoded_truth = offline_metrics.encode([r.teacher for r in matched.truth])
    scored = offline_metrics.score_subsets(
        encoded_pred, encoded_truth, matched.calls, matched.parse_failures, thresholds
    )
    ci = offline_metrics.bootstrap(encoded_pred, encoded_truth, resamples=resamples, seed=seed)
    if as_json:
        print_json(
            {
                "matching": matched.summary(),
                "subsets": {k: v.as_dict() for k, v in scored.items()},
                "bootstrap": ci.as_dict(),
            }
        )
        return
    summary = matched.summary()
    typer.echo(
        f"{summary['rows']} truth rows; {summary['missing_predictions']} without a prediction, "
        f"{summary['unreadable_lines']} unreadable prediction lines, "
        f"{summary['unmatched_predictions']} predictions for unknown intents; "
        f"{summary['repaired_rows']} repaired ({summary['repair_rate']:.1%}: clamped values, "
        "dropped keys, fixed names)"
    )
    _print_scores(scored, ci)


def _names(thresholds: tuple[int, ...]) -> set[str]:
    return {offline_metrics.subset_name(t) for t in thresholds}


def gate(
    name: str = typer.Argument(..., help="Registered variant to gate."),
    policy_name: str = typer.Option(
        None,
        "--policy",
        help="A named policy (gate-v2, the default; baseline-v2; demo-v2) or a policy JSON file.",
    ),
    test_set: Path = typer.Option(
        None, "--test-set", help="Test set (default: the bundled test split, the current one)."
    ),
    actor: str = typer.Option("cli", "--actor", help="Who runs the gate (stored)."),
    html_out: Path = typer.Option(
        None, "--html", help="Also write an HTML report: per-tool scores with intervals vs floors."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Evaluate a variant against the champion and store the gate run; exit 1 when it fails."""
    if html_out is not None and not html_out.parent.is_dir():
        fail(f"--html: the directory {html_out.parent} does not exist")
    try:
        policy = policy_named_or_file(policy_name) if policy_name is not None else GatePolicy()
    except PolicyError as exc:
        fail(f"--policy: {exc}")
    with session() as s:
        run = promotion.run_gate(
            s, name, actor, policy, test_set, progress=not as_json, settings=settings()
        )
        summary = promotion.gate_run_summary(run)
    if html_out is not None:
        html_out.write_text(gate_html(name, summary), encoding="utf-8")
    if as_json:
        print_json(summary)
    else:
        verdict = summary["metrics"]["verdict"]
        for criterion in verdict["criteria"]:
            mark = "[green]pass[/]" if criterion["passed"] else "[red]FAIL[/]"
            console.print(f"{mark} {criterion['name']}: {criterion['message']}", highlight=False)
        state = "PASSED" if summary["passed"] else "FAILED"
        typer.echo(
            f"gate run #{summary['id']} for {name}: {state} "
            f"(policy {summary['policy_version']}, test set {summary['test_set_hash'][:12]})"
        )
        if html_out is not None:
            typer.echo(f"HTML report with the per-tool scores plot: {html_out}")
    if not summary["passed"]:
        raise typer.Exit(1)


def gate_html(name: str, summary: dict[str, Any]) -> str:
    """The gate run as a page: verdict, criteria, and the scores-vs-floors plot."""
    from analysis import plots

    bars = plots.gate_score_bars(summary["metrics"])
    state = "PASSED" if summary["passed"] else "FAILED"
    title = f"gate run #{summary['id']} for {name}: {state}"
    rows = [("policy", str(summary["policy_version"])), ("test set", summary["test_set_hash"])]
    rows += [
        (f"{b.name} (interval)", f"{plots.fmt(b.estimate)} [{plots.fmt(b.low)}, "
         f"{plots.fmt(b.high)}], floor {plots.fmt(b.floor)}")
        for b in bars
    ]  # fmt: skip
    for criterion in summary["metrics"]["verdict"]["criteria"]:
        mark = "pass" if criterion["passed"] else "FAIL"
        rows.append((f"{mark}: {criterion['name']}", criterion["message"]))
    png = plots.gate_scores_png(bars, f"{name}: scores with bootstrap intervals vs floors")
    return plots.html_page(title, rows, png, f"per-tool scores of {name}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.command("evaluate")(evaluate)
    app.command("gate")(gate)
