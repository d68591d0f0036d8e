"""`ciebench judge ...` and the judge options shared by `score` and `evaluate`."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import app

judge_app = typer.Typer(help="Judge protocols, agreement between judges, drift canaries.", no_args_is_help=True)
app.add_typer(judge_app, name="judge")

JudgeProtocolOpt = Annotated[Optional[str], typer.Option(
    "--judge-protocol", help="idcs-v1 (ciebench's prompts) | idcs-paper (the authors' prompts, fetched at a pinned "
                             "commit); default: the judge config's (idcs-v1).")]
JudgePassesOpt = Annotated[int, typer.Option(
    "--judge-passes", help="Independent verdicts per sample (distinct seeds); the sample's score is their median "
                           "and a judge-noise interval is reported.")]
JudgePromptsOpt = Annotated[Optional[str], typer.Option(
    "--judge-prompts", help="Folder with local copies of a pinned protocol's files (verified by sha256).")]
MaxCostOpt = Annotated[Optional[float], typer.Option(
    "--max-cost", help="USD: stop issuing judge calls before the estimate of spent + committed cost exceeds it; "
                       "the rest is reported as not judged and a rerun continues.")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Print the judge calls, tokens and cost this scoring would need (cached calls are free); "
                      "send nothing.")]


def judge_run_options(protocol: Optional[str], passes: int, prompts: Optional[str], max_cost: Optional[float]):
    from ..errors import CiebenchError
    from ..judge.run import JudgeRunOptions

    try:
        return JudgeRunOptions(protocol=protocol, passes=passes, prompts_dir=prompts, max_cost=max_cost)
    except CiebenchError as exc:
        typer.echo(f"error: {exc.one_line()}", err=True)
        raise typer.Exit(int(exc.exit_code))


def list_judge_protocols_lines() -> list[str]:
    """One line per judge protocol, for `ciebench metrics` and `ciebench judge protocols`."""
    from ..judge.protocols import JUDGE_PROTOCOLS

    lines = []
    for name, proto in JUDGE_PROTOCOLS.items():
        where = f"prompts from {proto.asset.source} (sha256 {proto.asset.sha256[:12]}...)" if proto.asset else "packaged prompts"
        lines.append(f"  {name:<15} spec {_spec_hash(proto)}  {proto.description}; {where}")
    return lines


def _spec_hash(proto) -> str:
    from ..io import stable_hash

    return stable_hash(proto.to_dict())


@judge_app.command("protocols")
def protocols_cmd() -> None:
    """List judge protocols. The hash in a run's summary also covers the exact prompt texts."""
    typer.echo("judge protocols:")
    for line in list_judge_protocols_lines():
        typer.echo(line)
