"""The commands: each parses, calls one function of the stage that does the work, renders.

Every setting a command has comes from its config class (`spurcli.cli.options`); what is left
here is each command's arguments and output files. The work is imported inside each command, so
that `spurcli --help`, `spurcli plugins` and `spurcli classes` start fast and import no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from spurcli import console, imagenet
from spurcli.cli.app import (
    JsonFile,
    JsonFlag,
    app,
    check_outputs,
    emit,
    print_json,
    print_line,
    print_wide,
)
from spurcli.cli.options import ConfigFile, Sets, load_settings, settings_options, typed
from spurcli.errors import SpurcliError, UsageError
from spurcli.evaluate.config import CompareConfig, CurateConfig, ScoreConfig
from spurcli.experiment.config import TABLES
from spurcli.generate.config import FinetuneConfig, SampleConfig
from spurcli.generate.prompts import read_prompts_file
from spurcli.records import FINETUNE_CARD, PIPELINE_DIR
from spurcli.settings import read_toml
from spurcli.text import rich_text, terminal


@app.command("plugins")
def plugins_command(as_json: JsonFlag = False) -> None:
    """List installed plugins and the classifiers, feature extractors, detectors each registers."""
    from spurcli.plugins import get_plugins

    plugins = get_plugins()
    infos = plugins.info()
    if as_json:
        keys = ("name", "version", "classifiers", "extractors", "detectors")
        listed = [{k: getattr(p, k) for k in keys} for p in infos]
        print_json({"plugins": listed, "failed": plugins.failed})
        return
    table = Table(title="spurcli plugins")
    for column in ("plugin", "version", "classifiers", "feature extractors", "detectors"):
        table.add_column(column)
    for p in infos:
        names = (p.classifiers, p.extractors, p.detectors)
        cells = (p.name, p.version or "", *map(", ".join, names))
        table.add_row(*map(escape, cells))  # names come from third-party code: not markup
    # Failed plugins were already warned about (once, on stderr) when they were loaded.
    for name, why in plugins.failed.items():
        table.add_row(escape(name), "[red]failed[/]", escape(why), "", "")
    console.stdout.print(table)


@app.command("classes")
def classes_command(
    query: Annotated[
        str | None, typer.Argument(help="Index, WordNet id, or part of a class name.")
    ] = None,
    spurious: Annotated[
        bool,
        typer.Option("--spurious", help="The 100 Spurious ImageNet classes and their feature."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Look up ImageNet-1k classes (or the Spurious ImageNet ones with --spurious)."""
    matches = imagenet.search_classes(query)
    features: dict[int, str] = {}
    if spurious:
        features = {s.cls.index: s.feature for s in imagenet.spurious_classes()}
        matches = [c for c in matches if c.index in features]
    if as_json:
        rows = []
        for c in matches:
            row = {"index": c.index, "wnid": c.wnid, "name": c.name, "lemmas": list(c.lemmas)}
            if spurious:
                row["spurious_feature"] = features[c.index]
            rows.append(row)
        print_json(rows)
        return
    if not matches:
        raise SpurcliError(f"no ImageNet class matches '{query}'")
    table = Table(title="Spurious ImageNet classes" if spurious else "ImageNet-1k classes")
    for column in ("index", "wnid", "name", "spurious feature" if spurious else "synonyms"):
        table.add_column(column)
    for c in matches:
        last = features[c.index] if spurious else ", ".join(c.lemmas)
        table.add_row(str(c.index), c.wnid, c.name, last)
    console.stdout.print(table)


@app.command("score")
@settings_options(ScoreConfig)
def score_command(
    images_dir: Annotated[
        Path, typer.Argument(help="Folder of images to score (recursive), or the SIN root.")
    ],
    config: ConfigFile = None,
    sets: Sets = None,
    json_out: JsonFile = None,
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="Write one row per image and classifier here.")
    ] = None,
    class_csv: Annotated[
        Path | None,
        typer.Option(
            "--class-csv",
            help="With --layout spurious-imagenet: the released per-class table as CSV.",
        ),
    ] = None,
    *,
    given: dict[str, Any],
) -> None:
    """Score how spurious a set of images is for a class, per classifier and across them."""
    from spurcli.evaluate import score

    # A misspelled [scroe] is an error; the tables of a run config are left alone.
    cfg = load_settings(ScoreConfig, config, "score", sets, given, ("score", *TABLES))
    if class_csv is not None and cfg.layout != "spurious-imagenet":
        raise UsageError("--class-csv is the per-class table of --layout spurious-imagenet")
    outputs = {"--json": None if json_out == "-" else json_out, "--csv": csv_out}
    check_outputs({**outputs, "--class-csv": class_csv})
    result = score.score(cfg, images_dir)
    if not console.is_main_process():
        return  # every process holds the gathered result; only the first one reports it
    if csv_out is not None:
        result.write_csv(csv_out)
    if class_csv is not None:
        result.write_class_csv(class_csv)  # type: ignore[union-attr]
    emit(result.to_json, lambda: print_wide(result.table()), json_out)


@app.command("sample")
@settings_options(SampleConfig, skip=("model",))
def sample_command(
    model: Annotated[
        str | None,
        typer.Argument(
            help="A finetune run folder, a diffusers folder, a hub id, 'tiny' or an embedded "
            "one: mini, flag-mini, flag-mini-128 (or `model` in --config).",
            show_default=False,
        ),
    ] = None,
    config: ConfigFile = None,
    sets: Sets = None,
    prompts_file: Annotated[
        Path | None, typer.Option("--prompts-file", help="One prompt per line (# comments).")
    ] = None,
    as_json: JsonFlag = False,
    *,
    given: dict[str, Any],
) -> None:
    """Generate N images per prompt (resumable, data-parallel under torchrun/accelerate)."""
    from spurcli.generate import sample

    if model is not None:
        given["model"] = model
    if prompts_file is not None:  # the command line's prompts replace the file's
        given["prompts"] = [*given.get("prompts", ()), *read_prompts_file(prompts_file)]
    cfg = load_settings(SampleConfig, config, "sample", sets, given, TABLES)
    # The field's default ("tiny") serves Python callers; on the command line a model is named.
    given_sets = {s.partition("=")[0].strip().replace("-", "_") for s in sets or ()}
    if model is None and "model" not in given_sets and not _config_gives(config, "sample", "model"):
        raise UsageError("MODEL is required (or `model` in the --config file)")
    result = sample.sample(cfg)
    if console.is_main_process():
        emit(result.to_json, lambda: _print_sampled(result), "-" if as_json else None)


def _config_gives(path: Path | None, table: str, key: str) -> bool:
    """The config file sets ``key`` (in ``[table]``, or at top level as `load_config` shares)."""
    if path is None:
        return False
    data = read_toml(path)
    section = data.get(table)
    keys = {k.replace("-", "_") for k, v in data.items() if not isinstance(v, dict)}
    if isinstance(section, dict):
        keys |= {k.replace("-", "_") for k in section}
    return key in keys


def _print_sampled(result: Any) -> None:
    print_line(
        terminal(
            f"{len(result.files)} images in {result.out} ({result.generated} generated, "
            f"{result.skipped} already there; {result.images_per_second:.2f} images/s); "
            f"prompts: {'; '.join(result.prompts)}"
        )
    )


@app.command("compare")
@settings_options(CompareConfig)
def compare_command(
    dir_a: Annotated[Path, typer.Argument(help="First image set (e.g. generated images).")],
    dir_b: Annotated[Path, typer.Argument(help="Second image set (e.g. the references).")],
    config: ConfigFile = None,
    sets: Sets = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the HTML report here.")
    ] = None,
    json_out: JsonFile = None,
    label_a: Annotated[str, typer.Option("--label-a", help="Name of the first set.")] = "A",
    label_b: Annotated[str, typer.Option("--label-b", help="Name of the second set.")] = "B",
    *,
    given: dict[str, Any],
) -> None:
    """Compare two image sets: scores side by side, feature-space similarity, HTML report."""
    from spurcli.evaluate import compare
    from spurcli.experiment import report as reports

    cfg = load_settings(CompareConfig, config, "compare", sets, given, TABLES)
    check_outputs({"--json": None if json_out == "-" else json_out, "--report": report})
    result = compare.compare(dir_a, dir_b, cfg, labels=(label_a, label_b))
    if not console.is_main_process():
        return
    if report is not None:
        title = f"spurcli compare: {label_a} vs {label_b}"
        reports.write_report(report, [result], title=title, max_images=cfg.report_images)
        console.log.info("report: %s", report)
    emit(result.to_json, lambda: [print_wide(table) for table in result.tables()], json_out)


@app.command("curate")
# mode is --link/--copy below; report_images serves the report of `spurcli run` only.
@settings_options(CurateConfig, skip=("mode", "report_images"))
def curate_command(
    ctx: typer.Context,
    images_dir: Annotated[Path, typer.Argument(help="Generated images (recursive); unchanged.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="The dataset folder to write (new).")
    ] = None,
    config: ConfigFile = None,
    sets: Sets = None,
    link: Annotated[
        bool, typer.Option("--link/--copy", help="Symlink the kept files instead of copying.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the HTML report here.")
    ] = None,
    json_out: JsonFile = None,
    *,
    given: dict[str, Any],
) -> None:
    """Filter generated images into a publishable test set with a datasheet (see docs/curate.md)."""
    from spurcli.evaluate import curate
    from spurcli.experiment import report as reports

    if out is None:
        raise typer.BadParameter("--out DATASET_DIR is required", param_hint="--out")
    if typed(ctx, "link"):
        given["mode"] = "link" if link else "copy"
    cfg = load_settings(CurateConfig, config, "curate", sets, given, TABLES)
    result = curate.curate(images_dir, out, cfg)
    if not console.is_main_process():
        return
    if report is not None:
        reports.write_report(report, [], curations=[result], title=f"spurcli curate: {out}")
        console.log.info("report: %s", report)
    emit(result.to_json, lambda: print_wide(result.table()), json_out)
    if not result.kept:
        console.stderr.print(f"warning: {result.empty_message()}", markup=False, highlight=False)


@app.command("run")
def run_command(
    config: Annotated[
        Path, typer.Argument(help="Run config (TOML), e.g. examples/quickstart.toml.")
    ],
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value or table.key=value, e.g. finetune.steps=10."),
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option("--revision", help="Base hub model's branch, tag or commit (--set revision)."),
    ] = None,
    as_json: JsonFlag = False,
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain",
            help="Discard and retrain a fine-tuned arm whose recorded settings differ from CONFIG.",
        ),
    ] = False,
) -> None:
    """The whole experiment: finetune, sample, score, compare, report (resumes by stage)."""
    from spurcli.experiment import run

    pins = [f"revision={revision}"] if revision is not None else []
    result = run.run_experiment(config, sets=[*(sets or ()), *pins], retrain=retrain)
    if console.is_main_process():
        emit(result.to_json, lambda: _print_experiment(result), "-" if as_json else None)


def _print_experiment(result: Any) -> None:
    from spurcli.experiment.summary import summary_tables

    style = {"pos": "red", "neg": "green", "": ""}
    for i, table_data in enumerate(summary_tables(result.summary)):
        title = f"spurcli run: {result.out}" if i == 0 else table_data["title"]
        table = Table(title=rich_text(title), caption=rich_text(table_data["caption"]))
        for j, column in enumerate(table_data["columns"]):
            table.add_column(escape(column), justify="left" if j == 0 else "right", overflow="fold")
        for row in table_data["rows"]:
            cells = [
                f"[{style[c['css']]}]{escape(c['text'])}[/]" if c["css"] else escape(c["text"])
                for c in row[1:]
            ]
            table.add_row(rich_text(row[0]), *cells)
        print_wide(table)
    for note in result.summary["notes"]:
        print_line(terminal(note))
    ran = [
        f"{name} ({result.reasons.get(name, 'ran')})"
        for name, state in result.stages.items()
        if state == "ran"
    ]
    skipped = [name for name, state in result.stages.items() if state == "skipped"]
    if len(ran) > 8:  # a replicated run: the list is in --json, with the reasons
        print_line(f"ran {len(ran)} stages (`spurcli run --json` lists each and why)")
    elif ran:
        print_line("ran: " + "; ".join(ran))
    print_line(
        terminal(f"report: {result.report}")
        + (f" ({len(skipped)} stages were up to date)" if skipped else "")
    )


FINETUNE_PANEL = "finetune options (each also a key of CONFIG.toml, _ for -)"


@app.command("finetune")
@settings_options(
    FinetuneConfig, panel="finetune options (each also a key of CONFIG.toml, _ for -)"
)
def finetune_command(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="TOML file: options at top level or in a finetune table; paths relative "
            "to it; options given here win."
        ),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value for any config key (repeatable)."),
    ] = None,
    *,
    given: dict[str, Any],
) -> None:
    """Fine-tune Stable Diffusion on reference images: DreamBooth + prior preservation + SFSL."""
    from spurcli.experiment import run
    from spurcli.experiment.plan import is_experiment_config
    from spurcli.generate import finetune

    if config is not None and config.is_file() and is_experiment_config(config):
        cfg = run.finetune_config(config, sets or (), given)  # as `spurcli run` trains it
    else:  # a misspelled [finetun] is an error here too
        cfg = load_settings(FinetuneConfig, config, "finetune", sets, given, TABLES)
    out = finetune.finetune(cfg)
    if console.is_main_process():
        card = json.loads((out / FINETUNE_CARD).read_text(encoding="utf-8"))
        losses = ", ".join(f"{k} {v:.4f}" for k, v in card.get("final_losses", {}).items())
        made = f"LoRA adapters in {out / 'lora'}" if card.get("lora") else None
        made = made or f"pipeline in {out / PIPELINE_DIR}"
        print_line(terminal(f"{out}: {card['steps_done']} steps; {losses}; {made}"))
