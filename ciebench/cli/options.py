"""Options that several commands share, declared once so that each is spelled, typed and explained the
same way everywhere (`--dataset/-d DATASET`, `--out/-o`, `--device`, the judge and Ray options, ...).

Each is an `Annotated` type; a command gives the default in its own signature."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DATASET_HELP = ("'mini' (embedded), 'ciebench' (official release, downloaded and verified), a folder in the "
                "authors' or Reason-Edit layout, a JSONL manifest, a saved HF dataset, parquet, or hf:ORG/NAME[@rev].")

# --- what to run -------------------------------------------------------------------------------------
DatasetArg = Annotated[str, typer.Argument(metavar="DATASET", help=DATASET_HELP)]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", "-d", metavar="DATASET", help=DATASET_HELP)]
EditorOpt = Annotated[str, typer.Option("--editor", "-e", help="Registered editor name (see `ciebench editors`), "
                                                                "rewrite:EDITOR, or package.module:Class.")]
EditorsOpt = Annotated[list[str], typer.Option("--editor", "-e", help="Editor of the planned run (repeatable): a "
                                                                       "registered name or package.module:Class.")]
EditorArgOpt = Annotated[list[str], typer.Option("--editor-arg", help="Editor option key=value (repeatable), typed by "
                                                                       "the editor's config.")]
EditorConfigOpt = Annotated[Optional[Path], typer.Option("--editor-config", help="YAML file of editor options.")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help="Named editor preset (e.g. lite; see `ciebench "
                                                                    "editors`).")]
SeedsOpt = Annotated[str, typer.Option("--seeds", help="Comma-separated run seeds, e.g. 0,1,2.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=0, help="Only the first N samples.")]
BenchmarkOpt = Annotated[Optional[str], typer.Option("--benchmark", help="Registered benchmark (see `ciebench "
                                                                          "benchmarks`); replaces --dataset.")]
BenchmarkRootOpt = Annotated[Optional[str], typer.Option("--benchmark-root", help="The benchmark's folder in its "
                                                                                  "official layout (default: its hub "
                                                                                  "snapshot).")]
IgnoreChecksumsOpt = Annotated[bool, typer.Option("--ignore-checksums", help="Accept a CIEBench release whose files "
                                                                              "differ from the shipped sha256 "
                                                                              "manifest.")]

# --- how to score ------------------------------------------------------------------------------------
ProtocolOpt = Annotated[Optional[str], typer.Option("--protocol", "-p", help="Region protocol: cielr | smartedit | exact "
                                                                              "| cielr-full | smartedit-full (default: "
                                                                              "the dataset's; see `ciebench metrics`).")]
MetricsOpt = Annotated[Optional[str], typer.Option("--metrics", help="Comma-separated metrics (default: all region "
                                                                      "metrics, + idcs with --judge; see `ciebench "
                                                                      "metrics`).")]
JudgeOpt = Annotated[Optional[str], typer.Option("--judge", help="IDCS judge preset (qwen, openai, local, lite) or "
                                                                  "config file; omit for no IDCS.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu | cuda | cuda:N")]
ScoreBatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per scoring batch (CLIP, "
                                                                                    "LPIPS).")]
MinCoverageOpt = Annotated[Optional[float], typer.Option(
    "--min-coverage", help="Exit 1 when a metric covers less than this fraction of samples (e.g. 0.95): those "
                           "named in --metrics, else every metric with a value for some sample.")]

# --- judge -------------------------------------------------------------------------------------------
JudgeProtocolOpt = Annotated[Optional[str], typer.Option(
    "--judge-protocol", help="idcs-v1 (ciebench's prompts) | idcs-paper (the authors' prompts, fetched at a pinned "
                             "commit); default: the judge config's (idcs-v1).")]
JudgePassesOpt = Annotated[int, typer.Option(
    "--judge-passes", help="Independent verdicts per sample (distinct seeds); the sample's score is their median "
                           "and a judge-noise interval is reported.")]
JudgePromptsOpt = Annotated[Optional[str], typer.Option(
    "--judge-prompts", help="Folder with local copies of the pinned prompt files of the judge protocol or the "
                            "benchmark (verified by sha256; default: fetched at the pinned commit).")]
MaxCostOpt = Annotated[Optional[float], typer.Option(
    "--max-cost", help="USD: stop issuing judge calls before the estimate of spent + committed cost exceeds it; "
                       "the rest is reported as not judged and a rerun continues.")]
JudgeCanariesOpt = Annotated[str, typer.Option(
    "--judge-canaries", help="Re-judge the canaries of a calibrated judge (`ciebench judge calibrate`): day (once a "
                             "UTC day), run (every run) or off; paid from --max-cost, skipped with a note when it cannot be.")]
JudgeBatchOpt = Annotated[bool, typer.Option(
    "--judge-batch", help="Send judge calls through the provider's OpenAI-compatible Batch API (cheaper, slower); "
                          "a rerun after a crash resumes the pending batch.")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Print the judge calls, tokens and cost this scoring would need (cached calls are free); "
                      "send nothing.")]

# --- where it runs -----------------------------------------------------------------------------------
BackendOpt = Annotated[str, typer.Option("--backend", help="local | ray (shard samples to Ray workers; see "
                                                            "docs/scale.md).")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", help="Ray cluster to join: auto (the cluster of `ray start` on this machine), HOST:PORT, or "
                          "ray://HOST:10001. Default: $RAY_ADDRESS, else a private local Ray for this run.")]
NumWorkersOpt = Annotated[Optional[int], typer.Option("--num-workers", help="Ray workers (default: as many as the "
                                                                             "cluster's GPUs, or CPUs, allow).")]
GpusPerWorkerOpt = Annotated[Optional[float], typer.Option("--gpus-per-worker", help="GPUs per Ray worker (default 1 "
                                                                                      "with --device cuda, else 0; "
                                                                                      "fractions share a GPU).")]
CpusPerWorkerOpt = Annotated[float, typer.Option("--cpus-per-worker", help="CPUs per Ray worker.")]

# --- outputs -----------------------------------------------------------------------------------------
RunDirArg = Annotated[Path, typer.Argument(metavar="RUN", help="Run folder (from `ciebench evaluate` or `ciebench "
                                                                "score`).")]


def split_names(text: Optional[str]) -> Optional[tuple[str, ...]]:
    """`--metrics a, b` -> ("a", "b"); None when the option was not given."""
    return tuple(m.strip() for m in text.split(",") if m.strip()) if text else None
