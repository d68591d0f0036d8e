"""`ciebench judge ...` (protocols, agreement, canaries), and the judge options of `score` and `evaluate` as one object."""
from __future__ import annotations

from typing import Optional

import typer

from ciebench.errors import CiebenchError, ExitCode, UsageError

from .handling import CommandApp
from .options import DatasetOpt, JudgePromptsOpt, JudgeProtocolOpt

app = CommandApp(help="Judge protocols, agreement between judges, drift canaries.", no_args_is_help=True)

def list_judge_protocols_lines() -> list[str]:
    """One line per judge protocol, for `ciebench metrics` and `ciebench judge protocols`."""
    from ciebench.judge.protocols import JUDGE_PROTOCOLS

    lines = []
    for name, proto in JUDGE_PROTOCOLS.items():
        where = f"prompts from {proto.asset.source} (sha256 {proto.asset.sha256[:12]}...)" if proto.asset else "packaged prompts"
        lines.append(f"  {name:<15} spec {_spec_hash(proto)}  {proto.description}; {where}")
    return lines


def _spec_hash(proto) -> str:
    from ciebench.io import stable_hash

    return stable_hash(proto.to_dict())


@app.command("protocols")
def protocols_cmd() -> None:
    """List judge protocols. The hash in a run's summary also covers the exact prompt texts."""
    typer.echo("judge protocols:")
    for line in list_judge_protocols_lines():
        typer.echo(line)


@app.command("agreement")
def agreement_cmd(
    runs: list[str] = typer.Argument(..., help="Pairs A B [A B ...]: run folders scored by two judges on the same "
                                               "predictions, or a run and a human-ratings CSV (sample_id, seed, rater, score)."),
    metric: str = typer.Option("idcs", "--metric", help="The judged column of samples.csv."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Folder for agreement.json, agreement.csv and scatter.png."),
    lo: int = typer.Option(1, "--min-score", help="Lowest category of the kappa scale."),
    hi: int = typer.Option(5, "--max-score", help="Highest category of the kappa scale."),
) -> None:
    """Spearman and quadratic-weighted Cohen's kappa (bootstrap 95% CIs) per pair; with several pairs,
    Kendall's tau of the system ranking under judge A vs judge B."""
    from pathlib import Path

    from ciebench.io import atomic_write_json, atomic_write_text
    from ciebench.judge.agreement import load_scores, pair_agreement, ranking_tau, scatter_plot

    if len(runs) % 2:
        raise UsageError("give pairs of runs: A B [A B ...]")
    pairs = [pair_agreement(load_scores(a, metric), load_scores(b, metric), lo, hi)
             for a, b in zip(runs[::2], runs[1::2])]
    header = f"{'A':<24} {'B':<24} {'n':>5} {'spearman [95% CI]':>26} {'kappa_q [95% CI]':>26} {'mean A':>7} {'mean B':>7}"
    typer.echo(header)
    rows = []
    for p in pairs:
        typer.echo(f"{p.a:<24} {p.b:<24} {p.n:>5} {_ci(p.spearman, p.spearman_ci):>26} {_ci(p.kappa, p.kappa_ci):>26} "
                   f"{p.mean_a:>7.3f} {p.mean_b:>7.3f}")
        rows.append(p.to_dict())
    tau = ranking_tau(pairs)
    if len(pairs) > 1:
        typer.echo(f"Kendall tau of the system ranking (A vs B): {tau:.3f}")
    if out:
        folder = Path(out)
        atomic_write_json(folder / "agreement.json", {"pairs": rows, "kendall_tau_ranking": tau if len(pairs) > 1 else None,
                                                      "metric": metric, "scale": [lo, hi]})
        lines = ["a,b,n,spearman,spearman_low,spearman_high,kappa_quadratic,kappa_low,kappa_high,mean_a,mean_b"]
        for p in pairs:
            lines.append(",".join(str(v) for v in (_csv(p.a), _csv(p.b), p.n, p.spearman, *p.spearman_ci, p.kappa,
                                                     *p.kappa_ci, p.mean_a, p.mean_b)))
        atomic_write_text(folder / "agreement.csv", "\n".join(lines) + "\n")
        scatter_plot(pairs, folder / "scatter.png")
        typer.echo(f"wrote {folder}/agreement.json, agreement.csv, scatter.png")


def _ci(v: float, ci: tuple[float, float]) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _csv(text: str) -> str:
    text = str(text).replace('"', '""')
    if text[:1] in ("=", "+", "-", "@"):  # a spreadsheet would run it as a formula
        text = "'" + text
    return f'"{text}"'


@app.command("calibrate")
def calibrate_cmd(
    judge: str = typer.Option(..., "--judge", help="Judge preset or config file."),
    canaries: Optional[str] = typer.Option(None, "--canaries", help="mini (default: the embedded images with "
                                                                    "synthetic edits) or a folder from `ciebench judge freeze`."),
    protocol: JudgeProtocolOpt = None,
    prompts: JudgePromptsOpt = None,
    threshold: float = typer.Option(0.9, "--threshold", help="Warn below this share of canaries scored as stored."),
) -> None:
    """Judge the canary set: the first time stores the reference verdicts for this judge (config and
    protocol hash), later times report agreement with them."""
    import dataclasses

    from ciebench.judge import canaries as canary_mod
    from ciebench.metrics.idcs import IDCSJudge, get_judge_config

    try:
        config = get_judge_config(judge)
        if protocol:
            config = dataclasses.replace(config, protocol=protocol)
        canary_set = canary_mod.load_canaries(canaries)
        # Calibration always asks afresh (no answer cache), so it measures today's model.
        idcs = IDCSJudge(config, cache_dir=None, prompts_dir=prompts)
        result = canary_mod.calibrate(idcs, canary_mod.judge_hash_of(config, idcs.protocol.hash), canary_set, threshold)
    except CiebenchError:
        raise
    except ValueError as exc:  # a malformed canary set or prompt source: a bad argument
        raise UsageError(str(exc)) from exc
    typer.echo(f"canary set {result['set']} ({result['n']} canaries, {result['scored']} scored), judge "
               f"{config.name} / {idcs.protocol.name}")
    if result["reference_created"]:
        typer.echo(f"stored the reference verdicts in {result['store']}")
    else:
        value = result["agreement"]
        typer.echo(f"agreement with the reference of {result['reference_date']}: "
                   f"{'n/a' if value is None else f'{value:.1%}'} of the {result['reference_scored']} canaries it "
                   f"scored ({result['failed_today']} failed to score today)")
        if result.get("warning"):
            typer.echo(f"warning: {result['warning']}", err=True)
            raise typer.Exit(int(ExitCode.INCOMPLETE))


@app.command("freeze")
def freeze_cmd(
    run: str = typer.Argument(..., help="A scored run folder."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for the canary set."),
    dataset: DatasetOpt = None,
) -> None:
    """Freeze a run's predictions (with their sources and instructions) as a canary set. The dataset
    defaults to the one in the run's spec.json."""
    from ciebench.judge.canaries import freeze_run, load_canaries

    folder = freeze_run(run, out, dataset)
    n = len(load_canaries(folder).items)
    typer.echo(f"wrote {n} canaries to {folder}; use it with --canaries {folder}")
