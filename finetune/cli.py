"""`distill-finetune`: a thin shell over the finetune library (prepare, check, train, export, eval)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from distillery.options import CommandGroup, workspace_option
from distillery.workspace import Workspace

from .check import CheckReport
from .config import MERGED_DIR, TRAIN_YAML, defaults, load_overrides, read_run, write_train_config
from .evaluate import Candidate, EvalReport
from .mixing import Composition, MixOptions
from .prepare import PrepareOptions, PrepareReport, prepare, prepare_options
from .train import LOG_FILE, TrainProgress, TrainResult, last_checkpoint, train
from .workspace import DEFAULT_MODEL, DEFAULT_SYSTEM, EMBEDDED, FinetuneError, Manifest

console = Console(stderr=True, soft_wrap=True)  # paths and errors stay on one greppable line
out = Console()  # tables: the results, on stdout
BASE_MODEL = os.environ.get("DISTILLERY_BASE_MODEL", DEFAULT_MODEL)
MODEL_HELP = f"Local model dir or hub id, or '{EMBEDDED}' for the bundled SmolLM2-135M (CPU-sized)."


def _layout(ctx: click.Context) -> Workspace:
    return Workspace(ctx.obj["workspace"])


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@workspace_option
@click.pass_context
def main(ctx: click.Context, workspace: Path) -> None:
    """Tune a model on the approved records with LLaMA-Factory: prepare, train, eval.

    \b
      distill-finetune prepare --model /models/Qwen2-7B-Instruct   # dataset, split by document, checked
      distill-finetune train                                       # LoRA, progress bar, merged model
      distill-finetune eval                                        # base vs tuned on the test split
    """
    ctx.ensure_object(dict)["workspace"] = workspace


@main.command("prepare")
@click.option("--approved", type=click.Path(dir_okay=False, path_type=Path),
              help="Approved records (TrainingExample JSONL) [default: <workspace>/exports/approved.jsonl].")
@click.option("--preferences", type=click.Path(dir_okay=False, path_type=Path),
              help="QC corrections as preference pairs [default: <workspace>/exports/preference_pairs.jsonl, if any].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Dataset directory [default: <workspace>/finetune/data].")
@click.option("--model", default=BASE_MODEL, show_default=True,
              help=f"The model you will train: its tokenizer measures lengths. {MODEL_HELP} Env: DISTILLERY_BASE_MODEL.")
@click.option("--format", "fmt", type=click.Choice(["alpaca", "sharegpt"]), default="alpaca", show_default=True)
@click.option("--file-type", type=click.Choice(["json", "jsonl"]), default="json", show_default=True)
@click.option("--val", "val_fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share of examples for validation (whole documents).")
@click.option("--test", "test_fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share of examples for the held-out test split (whole documents).")
@click.option("--seed", default=42, show_default=True, help="Seed of the document split.")
@click.option("--stratify", is_flag=True, help="Keep each label's share of documents in every split (closed-label tasks).")
@click.option("--cutoff-len", type=click.IntRange(min=16), default=defaults()["cutoff_len"], show_default=True,
              help="Training length limit in tokens; longer examples are reported (training truncates them).")
@click.option("--system", default=DEFAULT_SYSTEM, show_default=True, help="System prompt trained and served with.")
@click.option("--rejected", type=click.Path(dir_okay=False, path_type=Path),
              help="Records reviewers rejected, for KTO [default: <workspace>/exports/rejected.jsonl, if any].")
@click.option("--also", multiple=True, type=click.Choice(["kto", "ppo", "pt", "csv"]),
              help="Also write (repeatable): kto = answers with the reviewers' verdict (kto_tag); ppo = the training "
                   "prompts; pt = the stored documents' text for continued pre-training; csv = Input,Label per split "
                   "and Input,Reward, for other trainers.")
@click.option("--max-per-document", type=int, help="Training split: at most N examples from one document.")
@click.option("--max-per-label", type=int, help="Training split: at most N examples of one label (closed-label tasks).")
@click.option("--min-per-label", type=int,
              help="Training split: repeat the examples of rarer labels until each has N (closed-label tasks).")
@click.option("--few-shot", type=float, default=0.0, show_default=True,
              help="Share of training rows shown --shots solved examples (same task, other documents) first.")
@click.option("--shots", type=int, default=2, show_default=True, help="Solved examples in a few-shot row.")
@click.option("--without-reasoning", type=float, default=0.0, show_default=True,
              help="Share of training rows asked for, and answering with, the conclusion alone.")
@click.option("--answer-only", default=MixOptions.model_fields["answer_only"].default, show_default=True,
              help="Said after the instruction in a row without reasoning (write it in the task's language).")
@click.pass_context
def prepare_cmd(ctx: click.Context, approved: Path | None, preferences: Path | None, out_dir: Path | None, model: str,
                fmt: str, file_type: str, val_fraction: float, test_fraction: float, seed: int, stratify: bool,
                cutoff_len: int, system: str, rejected: Path | None, also: tuple[str, ...],
                max_per_document: int | None, max_per_label: int | None, min_per_label: int | None,
                few_shot: float, shots: int, without_reasoning: float, answer_only: str) -> None:
    """Write LLaMA-Factory dataset files from the approved records and check every example.

    Splits train/validation/test by source document (seeded), writes dataset_info.json, and
    reads everything back through LLaMA-Factory's own loader, each dataset with the stage that
    trains on it: an example it would drop fails the command by name. Re-running replaces the
    dataset only once the new one passes. Ends with what the training split is made of and its
    tokens against the model's size.
    """
    layout = _layout(ctx)
    default_prefs = layout.preferences if layout.preferences.is_file() else None
    default_rejected = layout.rejected if layout.rejected.is_file() else None
    mix = {"max_per_document": max_per_document, "max_per_label": max_per_label, "min_per_label": min_per_label,
           "few_shot": few_shot, "shots": shots, "without_reasoning": without_reasoning, "answer_only": answer_only}
    try:
        options = prepare_options(format=fmt, file_type=file_type, val_fraction=val_fraction,
                                  test_fraction=test_fraction, seed=seed, stratify=stratify, system=system,
                                  model=model, cutoff_len=cutoff_len, also=list(also), mix=mix)
        prepare_with_status(approved or layout.approved, out_dir or layout.finetune_data, options,
                            preferences=preferences or default_prefs, rejected=rejected or default_rejected,
                            workspace=layout.root)
    except FinetuneError as exc:
        raise _fail(exc) from exc
    stages = [name for name in also if name != "csv"]  # each --also but csv is a stage of its own
    console.print("next: [bold]distill-finetune train[/bold]" + (f" (or --stage {' / '.join(stages)})" if stages else ""))


# How the prepare table names the datasets beyond the SFT splits, with the stages that train on them.
EXTRA_LABELS = {"preference": "preference (DPO, ORPO, SimPO, rm)", "kto": "kto (KTO)", "prompts": "prompts (PPO)",
                "text_train": "text train (pt)", "text_validation": "text validation (pt)"}


def prepare_with_status(approved: Path, out_dir: Path, options: PrepareOptions, *, preferences: Path | None,
                        workspace: Path | None, rejected: Path | None = None) -> PrepareReport:
    """`prepare` with what it is doing on screen, then the datasets, the label sets, the check and
    what the training split is made of."""
    with console.status("preparing…") as status:
        report = prepare(approved, out_dir, options, preferences=preferences, rejected=rejected, workspace=workspace,
                         on_status=lambda msg: status.update(msg))
    table = Table(title=f"dataset {report.data_dir} ({options.format}, {options.file_type}, seed {options.seed})")
    for col in ("split", "examples", "documents", "file"):
        table.add_column(col, justify="left" if col in ("split", "file") else "right")
    others = {"preference": report.preference} if report.preference else {}
    for kind, info in {**report.splits, **others, **report.extra}.items():
        table.add_row(EXTRA_LABELS.get(kind, kind), str(info.examples), str(info.documents), info.file)
    out.print(table)
    if report.flat:
        console.print(f"CSV for other trainers: {', '.join(report.flat)}")
    if report.generated:
        console.print("generated records in the training split: "
                      + ", ".join(f"{origin} {n}" for origin, n in sorted(report.generated.items())))
    for what, excluded in (("preference pair(s)", report.preference_excluded), ("rejected record(s)", report.kto_excluded),
                           ("generated record(s)", report.generated_excluded)):
        for why, n in excluded.items():
            console.print(f"left out {n} {what}: {why}")
    for task, labels in report.tasks.items():
        console.print(f"task {task}: labels {' | '.join(labels.labels) if labels.labels else '(open-ended)'} "
                      f"[dim]({labels.source})[/dim]")
    _print_check(report.check)
    out.print(composition_table(report.composition))
    console.print("prompt forms: " + ", ".join(f"{form} {n}" for form, n in report.composition.forms.items()))
    console.print(size_line(report.composition))
    return report


def composition_table(c: Composition) -> Table:
    table = Table(title=f"training split: {c.rows} rows from {c.documents} documents (at most {c.most_per_document} from one)")
    for col in ("label", "approved", "dropped by caps", "repeated", "rows"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for share in c.labels:
        table.add_row(share.label, str(share.approved), str(share.dropped), str(share.repeated), str(share.rows))
    return table


def size_line(c: Composition) -> str:
    """The training tokens against the model: per parameter of the model and of its LoRA."""
    line = f"training tokens: {c.tokens or 0:,} per epoch"
    if c.model_parameters and c.lora_parameters and c.tokens:
        line += (f"; the model has {c.model_parameters / 1e6:,.1f}M parameters ({c.tokens / c.model_parameters:.3g} "
                 f"tokens each), a LoRA of rank {c.lora_rank} on every linear layer {c.lora_parameters / 1e6:,.2f}M "
                 f"({c.tokens / c.lora_parameters:.3g} tokens per trainable parameter per epoch)")
    else:
        line += " (the model's size could not be read from its config)"
    return line


def _print_check(check: CheckReport) -> None:
    total = sum(check.examples.values())
    console.print(f"[green]checked[/green]: LLaMA-Factory reads all {total} examples; longest {check.longest} tokens "
                  f"(cutoff_len {check.cutoff_len})")
    if check.over_cutoff:
        worst = sorted(check.over_cutoff, key=lambda o: -o.tokens)
        listed = ", ".join(f"{o.id} ({o.tokens})" for o in worst[:10])
        console.print(f"[yellow]{len(worst)} example(s) exceed cutoff_len {check.cutoff_len} and will be truncated in "
                      f"training[/yellow]: {listed}{' …' if len(worst) > 10 else ''}. Raise --cutoff-len, or shorten "
                      "the chunks (distill-annotate ingest --max-size)")


@main.command("check")
@click.argument("data_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
def check_cmd(ctx: click.Context, data_dir: Path | None) -> None:
    """Re-check a prepared dataset (e.g. after editing its files) through LLaMA-Factory's loader."""
    from .check import check_dataset

    try:
        with console.status("checking…") as status:
            report = check_dataset(data_dir or _layout(ctx).finetune_data, on_status=lambda msg: status.update(msg))
    except FinetuneError as exc:
        raise _fail(exc) from exc
    _print_check(report)


def _progress(unit: str) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn(f"{{task.completed}}/{{task.total}} {unit}"),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console)


@main.command("train")
@click.option("--run", "run_name", help="Run name: its directory is <workspace>/finetune/runs/<run> [default: <stage>-<method>].")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Prepared dataset [default: <workspace>/finetune/data].")
@click.option("--model", help=f"Base model [default: the one the dataset was prepared for]. {MODEL_HELP}")
@click.option("--method", type=click.Choice(["lora", "qlora"]), default="lora", show_default=True,
              help="qlora: 4-bit base weights (bitsandbytes), about a third of the GPU memory.")
@click.option("--stage", type=click.Choice(["sft", "pt", "dpo", "kto", "rm", "ppo"]), default="sft", show_default=True,
              help="dpo / rm: preference pairs from QC corrections; kto: answers with the reviewers' verdict; ppo: "
                   "the training prompts scored by --reward-run; these start from --from-run's merged model. pt: "
                   "continued pre-training on the documents' text (prepare --also pt), before SFT.")
@click.option("--from-run", help="Start from this run's merged model: the SFT run for dpo/kto/rm/ppo, a pt run for sft.")
@click.option("--reward-run", help="PPO: the rm run whose reward adapter scores the answers.")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML of LLaMA-Factory keys overriding the defaults (finetune/defaults.yaml).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one LLaMA-Factory key (repeatable).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True,
              help="auto: bf16 on GPUs that have it, else fp16; fp32 on CPU.")
@click.option("--deepspeed", type=click.Choice(["2", "3"]), help="Use DeepSpeed ZeRO stage 2 or 3 (pip install deepspeed).")
@click.option("--fresh", is_flag=True, help="Delete the run's checkpoints and train from scratch.")
@click.option("--merge/--no-merge", default=True, show_default=True, help="Merge the adapter into <run>/merged after training.")
@click.option("--dry-run", is_flag=True, help="Write train.yaml (and print it); do not train.")
@click.pass_context
def train_cmd(ctx: click.Context, run_name: str | None, data_dir: Path | None, model: str | None, method: str,
              stage: str, from_run: str | None, reward_run: str | None, config_file: Path | None, sets: tuple[str, ...],
              precision: str,
              deepspeed: str | None, fresh: bool, merge: bool, dry_run: bool) -> None:
    """Write the run's LLaMA-Factory YAML and train it with `llamafactory-cli train`.

    Re-running the same command resumes from the last checkpoint; a finished run is not
    trained again. Multi-GPU: every visible GPU is used (torchrun); add --deepspeed 2.
    """
    try:
        with console.status("writing the LLaMA-Factory config…"):
            run_dir, config, manifest = write_train_config(
                _layout(ctx), run_name=run_name, data_dir=data_dir, model=model, method=method, stage=stage,
                from_run=from_run, reward_run=reward_run, overrides=load_overrides(config_file, sets), precision=precision,
                deepspeed=int(deepspeed) if deepspeed else None)
    except FinetuneError as exc:
        raise _fail(exc) from exc
    path = run_dir / TRAIN_YAML
    _warn_cutoff(manifest, config["cutoff_len"])
    console.print(f"run [bold]{run_dir.name}[/bold]: {path}")
    if dry_run:
        out.print(path.read_text(encoding="utf-8"), markup=False, highlight=False)
        return
    try:
        result = train_with_progress(run_dir, fresh=fresh)
    except KeyboardInterrupt:
        last = last_checkpoint(Path(config["output_dir"]))
        console.print(f"[yellow]stopped[/yellow]; {'kept ' + last.name if last else 'no checkpoint yet'}: "
                      "run the same command to resume")
        raise SystemExit(130) from None
    except FinetuneError as exc:
        raise _fail(exc) from exc
    if merge and not (result.skipped and (run_dir / MERGED_DIR / "config.json").is_file()):
        ctx.invoke(export_cmd, run_name=run_dir.name)
    console.print(f"next: [bold]distill-finetune eval --run {run_dir.name}[/bold]")


def train_with_progress(run_dir: Path, *, fresh: bool = False) -> TrainResult:
    """`train` with a progress bar of its steps, then a table of how it went."""
    with _progress("steps") as progress:
        bar = progress.add_task("starting", total=None, info="")

        def update(p: TrainProgress) -> None:
            info = " · ".join(part for part in (
                f"loss {p.loss:.4f}" if p.loss is not None else "",
                f"eval {p.eval_loss:.4f}" if p.eval_loss is not None else "",
                f"epoch {p.epoch:.2f}" if p.epoch is not None else "") if part)
            progress.update(bar, description=p.stage, completed=p.step, total=p.total, info=info)

        result = train(run_dir, fresh=fresh, on_progress=update)
    table = Table(title=f"run {run_dir.name}", show_header=False)
    if result.skipped:
        console.print("already trained with this exact train.yaml: nothing to do (use --fresh to train again)")
    for label, value in (("steps", f"{result.steps}/{result.total_steps}"),
                         ("resumed from", result.resumed_from or "-"),
                         ("last training loss", f"{result.loss:.4f}" if result.loss is not None else "-"),
                         ("validation loss", f"{result.eval_loss:.4f}" if result.eval_loss is not None else "-"),
                         ("time", f"{result.elapsed_s:.0f} s"), ("adapter", str(result.adapter_dir)),
                         ("log", str(run_dir / LOG_FILE))):
        table.add_row(label, value)
    out.print(table)
    return result


def _warn_cutoff(manifest: Manifest, cutoff: int) -> None:
    lengths = [n for info in manifest.splits.values() for n in info.token_lengths]
    over = sum(1 for n in lengths if n > cutoff)
    if over:
        console.print(f"[yellow]{over} of {len(lengths)} examples exceed cutoff_len {cutoff}[/yellow] and are truncated")


@main.command("export")
@click.option("--run", "run_name", default="sft-lora", show_default=True, help="Run whose adapter to merge.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Target [default: <run>/merged].")
@click.pass_context
def export_cmd(ctx: click.Context, run_name: str, out_dir: Path | None = None) -> None:
    """Merge the run's LoRA adapter into its base model (llamafactory-cli export)."""
    from .export import export

    try:
        with console.status(f"merging the adapter of {run_name} (llamafactory-cli export)…"):
            target = export(_layout(ctx).run(run_name), out_dir=out_dir)
    except FinetuneError as exc:
        raise _fail(exc) from exc
    console.print(f"merged model: [bold]{target}[/bold] (serve loads it; the adapter dir also loads as base + adapter)")


@main.command("eval")
@click.option("--run", "run_name", default="sft-lora", show_default=True, help="Run to evaluate.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Prepared dataset [default: the run's dataset_dir].")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N test examples.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--adapter", "use_adapter", is_flag=True, help="Evaluate base + adapter instead of the merged model.")
@click.option("--no-base", is_flag=True, help="Skip the base model (tuned only).")
@click.option("--quantization", type=click.Choice(["none", "int8", "int4"]), default="none", show_default=True,
              help="Load both models quantized, as serve would.")
@click.pass_context
def eval_cmd(ctx: click.Context, run_name: str, data_dir: Path | None, limit: int | None, max_new_tokens: int,
             batch_size: int, use_adapter: bool, no_base: bool, quantization: str) -> None:
    """Score base and tuned model on the held-out test split; writes <run>/eval/eval.json."""
    from .evaluate import run_candidates

    run_dir = _layout(ctx).run(run_name)
    try:
        settings = read_run(run_dir)
        candidates = run_candidates(run_dir, use_adapter=use_adapter, base=not no_base)
        report, path = eval_with_progress(run_dir, Path(data_dir or settings["dataset_dir"]), candidates, limit=limit,
                                          max_new_tokens=max_new_tokens, batch_size=batch_size, quantization=quantization)
    except FinetuneError as exc:
        raise _fail(exc) from exc
    out.print(render(report))
    console.print(f"written: {path} (and every answer in predictions-*.jsonl beside it)")


def eval_with_progress(run_dir: Path, data_dir: Path, candidates: list[Candidate], **options: Any) -> tuple[EvalReport, Path]:
    """`evaluate` with a progress bar per model; the report is written to <run>/eval. (report, eval.json)"""
    from .evaluate import evaluate, write_report

    with _progress("examples") as progress:
        bars: dict[str, TaskID] = {}

        def update(name: str, done: int, total: int) -> None:
            if name not in bars:
                bars[name] = progress.add_task(f"eval {name}", total=total, info="")
            progress.update(bars[name], completed=done)

        report, predictions = evaluate(data_dir, candidates, on_progress=update, **options)
    return report, write_report(report, predictions, run_dir / "eval")


def render(report: EvalReport) -> Table:
    table = Table(title=f"test split: {report.test_examples} examples (max_new_tokens {report.max_new_tokens})")
    table.add_column("metric")
    for model in report.models:
        table.add_column(model.name, justify="right")
    if len(report.models) == 2:
        table.add_column("change", justify="right")
    rows = (("conclusion accuracy", "accuracy", True), ("macro-F1", "macro_f1", True),
            ("format compliance", "format_compliance", True), ("mean generated tokens", "mean_generated_tokens", False))
    for label, field, share in rows:
        values = [getattr(m, field) for m in report.models]
        cells = ["n/a" if v is None else f"{v:.1%}" if share else f"{v:.1f}" for v in values]
        if len(values) == 2:
            a, b = values
            cells.append("" if a is None or b is None else f"{(b - a) * 100:+.1f} pts" if share else f"{b - a:+.1f}")
        table.add_row(label, *cells)
    return table


@main.command("second-round")
@click.option("--run", "run_name", required=True, help="The SFT run whose tuned student answers its training prompts.")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Job config YAML naming the teacher (as for distill-annotate run) [default: the defaults].")
@click.option("--approved", type=click.Path(dir_okay=False, path_type=Path),
              help="Approved records (qc's export) [default: <workspace>/exports/approved.jsonl].")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N training prompts.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Longest student answer (conclusion and reasoning); a cut-off answer counts as unreadable.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.pass_context
def second_round_cmd(ctx: click.Context, run_name: str, config_path: Path | None, approved: Path | None,
                     limit: int | None, max_new_tokens: int, batch_size: int) -> None:
    """A teacher-corrected second round: the tuned student answers its training prompts, the teacher
    corrects the wrong answers, and each correction is stored (origin "correction") for qc.

    Student answers are cached in <run>/second_round (a re-run does not generate them again); the
    teacher's answers are in the call ledger (a re-run pays nothing twice). Once qc approved the
    corrections, export writes them as preference pairs for DPO from the SFT run.
    """
    import asyncio

    from distillery.store import Store
    from distillery.teacher_config import load_job_config

    from .second_round import SecondRoundStats, second_round

    layout = _layout(ctx)
    run_dir = layout.run(run_name)
    config = load_job_config(config_path)
    if problem := config.teacher.key_problem():
        raise click.ClickException(f"the teacher cannot run: {problem}")
    console.print(f"teacher: {config.teacher.resolved_model()} @ {config.teacher.resolved_base_url() or 'embedded local model'}")
    stop = asyncio.Event()  # Ctrl-C aborts (the model generates on this thread); what was stored stays
    try:
        with Store.open(layout.root) as store, _progress("answers") as progress:
            bars: dict[str, TaskID] = {}

            def update(phase: str, done: int, total: int, stats: SecondRoundStats) -> None:
                if phase not in bars:
                    bars[phase] = progress.add_task("student answers" if phase == "student" else "teacher judges",
                                                    total=total, info="")
                info = (f"cached {stats.cached}" if phase == "student" else
                        f"right {stats.right} · wrong {stats.wrong} · unreadable {stats.unreadable} · "
                        f"{stats.cost:.4f} {stats.currency}")
                progress.update(bars[phase], completed=done, total=total, info=info)

            try:
                stats = asyncio.run(second_round(store, run_dir, approved or layout.approved, config, limit=limit,
                                                 stop=stop, on_progress=update, max_new_tokens=max_new_tokens,
                                                 batch_size=batch_size))
            except KeyboardInterrupt:
                console.print("[yellow]stopped[/yellow]: what was stored stays; run the same command to resume")
                raise SystemExit(130) from None
    except FinetuneError as exc:
        raise _fail(exc) from exc
    table = Table(title=f"second round of run {run_name} (adapter {stats.adapter})", show_header=False)
    for label, value in (("training prompts", str(stats.seeds)),
                         ("student answers", f"{stats.answered} generated, {stats.cached} from the cache"),
                         ("student right", str(stats.right)),
                         ("student wrong", str(stats.wrong)),
                         ("student unreadable", str(stats.unreadable)),
                         ("judged by the teacher", f"{stats.judged} ({stats.calls_reused} answers reused, not paid again)"),
                         ("corrections", f"{stats.corrections} ({stats.made} stored now, {stats.fallback} with the "
                                         "approved answer where the teacher's correction was unusable)"),
                         ("cost", f"{stats.cost:.4f} {stats.currency}")):
        table.add_row(label, value)
    out.print(table)
    for reason, n in stats.dropped.items():
        console.print(f"left out {n}: {reason}")
    for error in stats.errors:
        console.print(f"[red]teacher error[/red]: {error}")
    if stats.stopped:  # a stop, the budget, quota or a refused key: exit 1, and how to go on
        raise click.ClickException(f"stopped early: {stats.stopped}; run the same command again to resume")
    console.print("next: [bold]distill-qc check[/bold], [bold]sample[/bold], [bold]review[/bold] and "
                  "[bold]export[/bold] (approved corrections become preference pairs), then [bold]distill-finetune "
                  f"prepare[/bold] and [bold]distill-finetune train --stage dpo --from-run {run_name}[/bold]")
