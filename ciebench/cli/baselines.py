"""`ciebench baselines ...`: one-time setup of baseline editors whose weights need assembling.

    ciebench baselines smartedit prepare [--variant 7b|13b] [--out DIR] [--force]
    ciebench baselines smartedit check DIR

"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ciebench.errors import ExitCode, UsageError

from .handling import CommandApp

app = CommandApp(help="One-time setup of baseline editors (downloads, weight merges, conversions).",
                  no_args_is_help=True)
smartedit_app = CommandApp(help="SmartEdit (TencentARC, CVPR 2024) from the official checkpoints.",
                            no_args_is_help=True)
app.add_typer(smartedit_app, name="smartedit")


@smartedit_app.command("prepare")
def smartedit_prepare(
    variant: str = typer.Option("7b", "--variant", help="7b or 13b."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Target folder; default $CIEBENCH_CACHE/smartedit/<repo>-step<step>, "
                                                            "where the `smartedit` editor looks by default."),
    step: int = typer.Option(15000, "--step", help="Checkpoint step of the released folders."),
    smartedit_repo: Optional[str] = typer.Option(None, "--smartedit-repo", help="Default: TencentARC/SmartEdit-7B or -13B."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Revision (commit) of the SmartEdit repo."),
    vicuna_repo: Optional[str] = typer.Option(None, "--vicuna-repo", help="LLM config + tokenizer (Vicuna-1.1)."),
    llava_delta_repo: Optional[str] = typer.Option(None, "--llava-delta-repo", help="LLaVA-1.1 delta weights."),
    llama_base_repo: Optional[str] = typer.Option(None, "--llama-base-repo",
                                                  help="Original LLaMA weights (HF format) the LLaVA delta applies to; "
                                                       "a hub id or a local folder."),
    force: bool = typer.Option(False, "--force", help="Replace an existing preparation."),
) -> None:
    """Download SmartEdit and its base weights, merge LLaVA-1.1's rows, convert to safetensors, check keys."""
    from ciebench.baselines.smartedit_prepare import prepare
    from ciebench.baselines.smartedit_sources import Sources

    try:
        sources = Sources.for_variant(variant, step=step, smartedit_repo=smartedit_repo, smartedit_revision=revision,
                                      vicuna_repo=vicuna_repo, llava_delta_repo=llava_delta_repo,
                                      llama_base_repo=llama_base_repo)
    except ValueError as exc:  # an unknown --variant
        raise UsageError(str(exc)) from exc
    folder = prepare(sources, out, force=force, echo=typer.echo)  # SmartEditWeightsError: exit 4
    hint = "" if out is None else f" --editor-arg weights_dir={folder}"
    typer.echo(f"ready: ciebench evaluate --editor smartedit{hint} --editor-arg variant={variant} ...")


@smartedit_app.command("check")
def smartedit_check(folder: Path = typer.Argument(..., help="A folder written by `prepare`.")) -> None:
    """Check a prepared folder's keys and shapes against the architecture (reads file headers only)."""
    from ciebench.baselines.smartedit_checkpoint import check_prepared

    report = check_prepared(folder)  # not a prepared folder: SmartEditWeightsError, exit 4
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(int(ExitCode.INCOMPLETE))
    typer.echo("ok: every expected key present once, no unexpected key, all shapes equal")

