"""The `spurcli` command: parse, call one function of the core, render the result.

Heavy modules (torch, diffusers) are imported inside the commands that need them, so that
`spurcli --help`, `spurcli plugins` and `spurcli classes` start fast and import no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import traceback
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from spurcli import __version__, console
from spurcli.errors import Signalled, SpurcliError, UsageError
from spurcli.text import rich_text, terminal

app = typer.Typer(
    name="spurcli",
    help="Generate class-wise spurious images with a fine-tuned Stable Diffusion and measure "
    "how strongly image classifiers fall for them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Options several commands share, declared once (the config-backed ones, --target, --device,
# --batch-size, --classifiers, --weights and --strict, are declared on the config fields).
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON).")]
JsonFile = Annotated[
    str | None, typer.Option("--json", help="Write the result as JSON here ('-': stdout).")
]

_state = {"verbose": 0}


def _version(value: bool) -> None:
    if value:
        print(f"spurcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Debug logs and full tracebacks.")
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or info logs.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    _state["verbose"] = verbose
    console.configure(verbose=verbose, quiet=quiet)


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def _emit(
    data: Callable[[], object], show: Callable[[], None], json_out: str | Path | None
) -> None:
    """Every command's result, the same way: ``--json FILE`` writes the JSON there and still
    shows the tables; ``--json -`` prints the JSON on stdout instead of them (machine-readable
    stdout); without ``--json`` only ``show()`` runs. Call it on the main process only."""
    if json_out is not None and json_out != "-":
        from spurcli.fileio import write_json

        write_json(json_out, data())
    if json_out == "-":
        _print_json(data())
    else:
        show()


def _names(text: str) -> list[str]:
    """``"resnet, vit,"`` -> ``["resnet", "vit"]``: a comma-separated option."""
    return [n.strip() for n in text.split(",") if n.strip()]


def _setting(cls: type, name: str, panel: str | None = None) -> Any:
    """The command-line option of config field ``name``: flags, help and the default shown by
    ``--help`` all come from the field's `spurcli.config.option` declaration. The default is
    the real one; `_given` tells a value typed on the command line from a default, so a TOML
    file still wins over every option not typed."""
    from spurcli.config import option_flags

    fld = cls.__dataclass_fields__[name]
    meta = fld.metadata
    flags = option_flags(fld, _hints(cls)[name])
    # A list option's default is "none given" (click would otherwise show and return []).
    default = None if fld.default is dataclasses.MISSING else fld.default
    if meta.get("comma"):  # one comma-separated value; its default as the user would type it
        default = ",".join(fld.default_factory()) or None  # type: ignore[misc]
    text = meta.get("help", "") + (" Required." if meta.get("required") else "")
    return typer.Option(default, *flags, help=text, rich_help_panel=panel, show_default=True)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _typed(ctx: typer.Context, name: str) -> bool:
    """Option ``name`` was typed on the command line (or set by the environment)."""
    # By name: Typer >= 0.17 carries its own copy of click, whose ParameterSource is not
    # click's class.
    source = getattr(ctx.get_parameter_source(name), "name", None)
    return source in ("COMMANDLINE", "ENVIRONMENT")


def _given(ctx: typer.Context, cls: type) -> dict[str, Any]:
    """The options of config ``cls`` typed on the command line (or set by the environment):
    the overrides of `spurcli.config.load_config`. click records each value's source."""
    fields = cls.__dataclass_fields__
    given = {n: v for n, v in ctx.params.items() if n in fields and _typed(ctx, n)}
    for name, value in given.items():
        if fields[name].metadata.get("comma") and isinstance(value, str):
            given[name] = _names(value)
    return given


@app.command("plugins")
def plugins_command(
    as_json: JsonFlag = False,
) -> None:
    """List installed plugins and the classifiers, feature extractors, detectors each registers."""
    from spurcli.plugins import get_plugins

    plugins = get_plugins()
    infos = plugins.info()
    if as_json:
        _print_json(
            {
                "plugins": [
                    {
                        "name": p.name,
                        "version": p.version,
                        "classifiers": p.classifiers,
                        "extractors": p.extractors,
                        "detectors": p.detectors,
                    }
                    for p in infos
                ],
                "failed": plugins.failed,
            }
        )
        return
    from rich.table import Table

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
    from spurcli import imagenet

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
        _print_json(rows)
        return
    if not matches:
        raise SpurcliError(f"no ImageNet class matches '{query}'")
    from rich.table import Table

    table = Table(title="Spurious ImageNet classes" if spurious else "ImageNet-1k classes")
    for column in ("index", "wnid", "name", "spurious feature" if spurious else "synonyms"):
        table.add_column(column)
    for c in matches:
        last = features[c.index] if spurious else ", ".join(c.lemmas)
        table.add_row(str(c.index), c.wnid, c.name, last)
    console.stdout.print(table)


def _sc(name: str) -> Any:
    from spurcli.config import ScoreConfig

    return _setting(ScoreConfig, name)


@app.command("score")
def score_command(
    ctx: typer.Context,
    images_dir: Annotated[
        Path, typer.Argument(help="Folder of images to score (recursive), or the SIN root.")
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="TOML file: options in a score table; options given here win."
        ),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value for any score setting (repeatable)."),
    ] = None,
    # One line per ScoreConfig field: help, default and bounds are declared there.
    target: str | None = _sc("target"),
    classifiers: str | None = _sc("classifiers"),  # comma-separated on the command line
    real: Path | None = _sc("real"),
    weights: list[str] | None = _sc("weights"),
    layout: str = _sc("layout"),
    preprocess: str = _sc("preprocess"),
    batch_size: int = _sc("batch_size"),
    device: str | None = _sc("device"),
    num_workers: int | None = _sc("num_workers"),
    image_size: int = _sc("image_size"),
    strict: bool = _sc("strict"),
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
    bootstrap: int = _sc("bootstrap"),
    bootstrap_seed: int = _sc("bootstrap_seed"),
) -> None:
    """Score how spurious a set of images is for a class, per classifier and across them."""
    from spurcli import score
    from spurcli.config import ScoreConfig, load_config
    from spurcli.experiment import TABLES

    options = _given(ctx, ScoreConfig)
    cfg = load_config(
        ScoreConfig,
        config,
        section="score",
        sets=sets or (),
        overrides=options,
        tables=("score", *TABLES),  # a misspelled [scroe] is an error
    )
    if class_csv is not None and cfg.layout != "spurious-imagenet":
        raise UsageError("--class-csv is the per-class table of --layout spurious-imagenet")
    outputs = {"--json": None if json_out == "-" else json_out, "--csv": csv_out}
    _check_outputs({**outputs, "--class-csv": class_csv})
    result = score.score(cfg, images_dir)
    if not console.is_main_process():
        return  # every process holds the gathered result; only the first one reports it
    if csv_out is not None:
        result.write_csv(csv_out)
    if class_csv is not None:
        result.write_class_csv(class_csv)  # type: ignore[union-attr]
    _emit(result.to_json, lambda: _print_wide(result.table()), json_out)


def _check_outputs(paths: dict[str, str | Path | None]) -> None:
    """Result files are probed before the work: a bad path must not cost the results."""
    from spurcli.fileio import check_output_file

    for option, path in paths.items():
        if path is not None and console.is_main_process():
            check_output_file(path, option)


def _print_wide(renderable: object) -> None:
    """Print a table at its natural width when stdout is a file or pipe (rich assumes 80)."""
    out = console.stdout
    if not out.is_terminal:
        from rich.console import Console
        from rich.measure import Measurement

        width = Measurement.get(out, out.options.update(width=10_000), renderable).maximum
        out = Console(file=out.file, width=max(width, out.width), soft_wrap=True)
    out.print(renderable)


def _sm(name: str) -> Any:
    from spurcli.config import SampleConfig

    return _setting(SampleConfig, name)


def _config_gives(path: Path | None, table: str, key: str) -> bool:
    """The config file sets ``key`` (in ``[table]``, or at top level as `load_config` shares)."""
    if path is None:
        return False
    from spurcli.config import read_toml

    data = read_toml(path)
    section = data.get(table)
    keys = {k.replace("-", "_") for k, v in data.items() if not isinstance(v, dict)}
    if isinstance(section, dict):
        keys |= {k.replace("-", "_") for k in section}
    return key in keys


@app.command("sample")
def sample_command(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Argument(
            help="A finetune run folder, a diffusers folder, a hub id, 'tiny' or 'mini' "
            "(or `model` in --config).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="TOML file: options in a sample table; options given here win."
        ),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value for any sample setting (repeatable)."),
    ] = None,
    # One line per SampleConfig field (model above): help, default and bounds are declared there.
    prompts: list[str] | None = _sm("prompts"),
    prompts_file: Annotated[
        Path | None, typer.Option("--prompts-file", help="One prompt per line (# comments).")
    ] = None,
    revision: str | None = _sm("revision"),
    n: int = _sm("n"),
    out: Path = _sm("out"),
    seed: int = _sm("seed"),
    steps: int = _sm("steps"),
    guidance: float = _sm("guidance"),
    negative_prompt: str | None = _sm("negative_prompt"),
    scheduler: str | None = _sm("scheduler"),
    batch_size: int = _sm("batch_size"),
    height: int | None = _sm("height"),
    width: int | None = _sm("width"),
    recontext: bool = _sm("recontext"),
    identifier: str | None = _sm("identifier"),
    attention_slicing: str | None = _sm("attention_slicing"),
    device: str | None = _sm("device"),
    dtype: str = _sm("dtype"),
    as_json: JsonFlag = False,
) -> None:
    """Generate N images per prompt (resumable, data-parallel under torchrun/accelerate)."""
    from spurcli.config import SampleConfig, load_config
    from spurcli.errors import UsageError
    from spurcli.experiment import TABLES
    from spurcli.sample import read_prompts_file, sample

    options = _given(ctx, SampleConfig)
    if prompts_file is not None:  # the command line's prompts replace the file's
        options["prompts"] = [*options.get("prompts", ()), *read_prompts_file(prompts_file)]
    # A misspelled [sampel] is an error; the other tables of a run config are left alone.
    cfg = load_config(
        SampleConfig, config, section="sample", sets=sets or (), overrides=options, tables=TABLES
    )
    # The field's default ("tiny") serves Python callers; on the command line a model is named.
    given_sets = {s.partition("=")[0].strip().replace("-", "_") for s in sets or ()}
    if model is None and "model" not in given_sets and not _config_gives(config, "sample", "model"):
        raise UsageError("MODEL is required (or `model` in the --config file)")
    result = sample(cfg)
    if console.is_main_process():
        _emit(result.to_json, lambda: _print_sampled(result), "-" if as_json else None)


def _print_sampled(result: Any) -> None:
    console.stdout.print(
        terminal(
            f"{len(result.files)} images in {result.out} ({result.generated} generated, "
            f"{result.skipped} already there; {result.images_per_second:.2f} images/s); "
            f"prompts: {'; '.join(result.prompts)}"
        ),
        markup=False,
        highlight=False,
    )


def _cp(name: str) -> Any:
    from spurcli.config import CompareConfig

    return _setting(CompareConfig, name)


@app.command("compare")
def compare_command(
    ctx: typer.Context,
    dir_a: Annotated[Path, typer.Argument(help="First image set (e.g. generated images).")],
    dir_b: Annotated[Path, typer.Argument(help="Second image set (e.g. the references).")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML file: options in a compare table (a run config's too); options given "
            "here win.",
        ),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value for any compare setting (repeatable)."),
    ] = None,
    # One line per CompareConfig field: help, default and bounds are declared there.
    target: str | None = _cp("target"),
    classifiers: str | None = _cp("classifiers"),  # comma-separated on the command line
    weights: list[str] | None = _cp("weights"),
    extractors: str | None = _cp("extractors"),  # comma-separated on the command line
    extractor_weights: list[str] | None = _cp("extractor_weights"),
    real: Path | None = _cp("real"),
    preprocess: str = _cp("preprocess"),
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the HTML report here.")
    ] = None,
    json_out: JsonFile = None,
    label_a: Annotated[str, typer.Option("--label-a", help="Name of the first set.")] = "A",
    label_b: Annotated[str, typer.Option("--label-b", help="Name of the second set.")] = "B",
    report_images: int = _cp("report_images"),
    batch_size: int = _cp("batch_size"),
    device: str | None = _cp("device"),
    strict: bool = _cp("strict"),
    bootstrap: int = _cp("bootstrap"),
    bootstrap_seed: int = _cp("bootstrap_seed"),
    paired: str = _cp("paired"),
) -> None:
    """Compare two image sets: scores side by side, feature-space similarity, HTML report."""
    from spurcli.compare import CompareConfig, compare
    from spurcli.config import load_config
    from spurcli.experiment import TABLES

    cfg = load_config(
        CompareConfig,
        config,
        section="compare",
        sets=sets or (),
        overrides=_given(ctx, CompareConfig),
        tables=TABLES,  # a misspelled [compar] is an error
    )
    _check_outputs({"--json": None if json_out == "-" else json_out, "--report": report})
    result = compare(dir_a, dir_b, cfg, labels=(label_a, label_b))
    if not console.is_main_process():
        return
    if report is not None:
        from spurcli.report import write_report

        title = f"spurcli compare: {label_a} vs {label_b}"
        write_report(report, [result], title=title, max_images=cfg.report_images)
        console.log.info("report: %s", report)
    _emit(result.to_json, lambda: [_print_wide(table) for table in result.tables()], json_out)


def _cu(name: str) -> Any:
    from spurcli.config import CurateConfig

    return _setting(CurateConfig, name)


@app.command("curate")
def curate_command(
    ctx: typer.Context,
    images_dir: Annotated[Path, typer.Argument(help="Generated images (recursive); unchanged.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="The dataset folder to write (new).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML file: options in a curate table (a run config's too); options given "
            "here win.",
        ),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value for any curate setting (repeatable)."),
    ] = None,
    # One line per CurateConfig field (mode: --link/--copy): help, default and bounds there.
    target: str | None = _cu("target"),
    classifiers: str | None = _cu("classifiers"),  # comma-separated on the command line
    min_fooled: int = _cu("min_fooled"),
    weights: list[str] | None = _cu("weights"),
    detectors: str | None = _cu("detectors"),  # comma-separated on the command line
    detector_weights: list[str] | None = _cu("detector_weights"),
    max_presence: float = _cu("max_presence"),
    object_prompts: list[str] | None = _cu("object_prompts"),
    feature: str | None = _cu("feature"),
    references: Path | None = _cu("references"),
    extractor: str = _cu("extractor"),
    extractor_weights: str | None = _cu("extractor_weights"),
    max_similarity: float = _cu("max_similarity"),
    evaluate_with: str | None = _cu("evaluate_with"),  # comma-separated on the command line
    limit: int | None = _cu("limit"),
    link: Annotated[
        bool, typer.Option("--link/--copy", help="Symlink the kept files instead of copying.")
    ] = False,
    overwrite: bool = _cu("overwrite"),
    strict: bool = _cu("strict"),
    preprocess: str = _cu("preprocess"),
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the HTML report here.")
    ] = None,
    json_out: JsonFile = None,
    batch_size: int = _cu("batch_size"),
    device: str | None = _cu("device"),
) -> None:
    """Filter generated images into a publishable test set with a datasheet (see docs/curate.md)."""
    from spurcli.config import CurateConfig, load_config
    from spurcli.curate import curate
    from spurcli.experiment import TABLES

    if out is None:
        raise typer.BadParameter("--out DATASET_DIR is required", param_hint="--out")
    options = _given(ctx, CurateConfig)
    if _typed(ctx, "link"):
        options["mode"] = "link" if link else "copy"
    cfg = load_config(
        CurateConfig,
        config,
        section="curate",
        sets=sets or (),
        overrides=options,
        tables=TABLES,  # a misspelled [curat] is an error
    )
    result = curate(images_dir, out, cfg)
    if not console.is_main_process():
        return
    if report is not None:
        from spurcli.report import write_report

        write_report(report, [], curations=[result], title=f"spurcli curate: {out}")
        console.log.info("report: %s", report)
    _emit(result.to_json, lambda: _print_wide(result.table()), json_out)
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
    from spurcli.experiment import run_experiment

    pins = [f"revision={revision}"] if revision is not None else []
    result = run_experiment(config, sets=[*(sets or ()), *pins], retrain=retrain)
    if console.is_main_process():
        _emit(result.to_json, lambda: _print_experiment(result), "-" if as_json else None)


def _print_experiment(result: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from spurcli.summary import summary_table

    table_data = summary_table(result.summary)
    table = Table(
        title=rich_text(f"spurcli run: {result.out}"), caption=rich_text(table_data["caption"])
    )
    for i, column in enumerate(table_data["columns"]):
        table.add_column(escape(column), justify="left" if i == 0 else "right", overflow="fold")
    style = {"pos": "red", "neg": "green", "": ""}
    for row in table_data["rows"]:
        cells = [
            f"[{style[c['css']]}]{escape(c['text'])}[/]" if c["css"] else escape(c["text"])
            for c in row[1:]
        ]
        table.add_row(rich_text(row[0]), *cells)
    _print_wide(table)
    for note in result.summary["notes"]:
        console.stdout.print(terminal(note), markup=False, highlight=False)
    ran = [
        f"{name} ({result.reasons.get(name, 'ran')})"
        for name, state in result.stages.items()
        if state == "ran"
    ]
    skipped = [name for name, state in result.stages.items() if state == "skipped"]
    if ran:
        console.stdout.print("ran: " + "; ".join(ran), markup=False, highlight=False)
    console.stdout.print(
        terminal(f"report: {result.report}")
        + (f" ({len(skipped)} stages were up to date)" if skipped else ""),
        markup=False,
        highlight=False,
    )


_FT = "finetune options (each also a key of CONFIG.toml, _ for -)"


def _ft(name: str) -> Any:
    from spurcli.config import FinetuneConfig

    return _setting(FinetuneConfig, name, _FT)


@app.command("finetune")
def finetune_command(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Argument(
            help="TOML file: options at top level or in a finetune table; paths relative "
            "to it; options given here win."
        ),
    ] = None,
    # One line per FinetuneConfig field: help, default and bounds are declared there.
    model: str = _ft("model"),
    revision: str | None = _ft("revision"),
    instance_dir: Path | None = _ft("instance_dir"),
    class_noun: str | None = _ft("class_noun"),
    target: str | None = _ft("target"),
    output_dir: Path | None = _ft("output_dir"),
    identifier: str = _ft("identifier"),
    instance_prompt: str = _ft("instance_prompt"),
    class_prompt: str = _ft("class_prompt"),
    class_dir: Path | None = _ft("class_dir"),
    num_class_images: int = _ft("num_class_images"),
    class_inference_steps: int = _ft("class_inference_steps"),
    class_guidance: float = _ft("class_guidance"),
    class_batch_size: int = _ft("class_batch_size"),
    prior_weight: float = _ft("prior_weight"),
    resolution: int = _ft("resolution"),
    center_crop: bool = _ft("center_crop"),
    batch_size: int = _ft("batch_size"),
    steps: int = _ft("steps"),
    grad_accum: int = _ft("grad_accum"),
    lr: float = _ft("lr"),
    text_encoder_lr: float | None = _ft("text_encoder_lr"),
    lr_scheduler: str = _ft("lr_scheduler"),
    warmup_steps: int = _ft("warmup_steps"),
    max_grad_norm: float = _ft("max_grad_norm"),
    weight_decay: float = _ft("weight_decay"),
    use_8bit_adam: bool = _ft("use_8bit_adam"),
    seed: int = _ft("seed"),
    train_text_encoder: bool = _ft("train_text_encoder"),
    sfsl_weight: float = _ft("sfsl_weight"),
    extractor: str = _ft("extractor"),
    extractor_weights: str | None = _ft("extractor_weights"),
    sfsl_target: str = _ft("sfsl_target"),
    sfsl_distance: str = _ft("sfsl_distance"),
    sfsl_max_timestep: int | None = _ft("sfsl_max_timestep"),
    sfsl_decode_size: int | None = _ft("sfsl_decode_size"),
    sfsl_decoder: str = _ft("sfsl_decoder"),
    sfsl_taesd: str = _ft("sfsl_taesd"),
    lora_rank: int = _ft("lora_rank"),
    lora_alpha: float | None = _ft("lora_alpha"),
    lora_dropout: float = _ft("lora_dropout"),
    lora_targets: list[str] | None = _ft("lora_targets"),
    mixed_precision: str = _ft("mixed_precision"),
    gradient_checkpointing: bool = _ft("gradient_checkpointing"),
    attention_slicing: str = _ft("attention_slicing"),
    checkpoint_every: int = _ft("checkpoint_every"),
    keep_checkpoints: int = _ft("keep_checkpoints"),
    resume: str | None = _ft("resume"),
    validate_every: int = _ft("validate_every"),
    validation_prompt: list[str] | None = _ft("validation_prompt"),
    num_validation_images: int = _ft("num_validation_images"),
    validation_steps: int = _ft("validation_steps"),
    validation_guidance: float = _ft("validation_guidance"),
    report_to: str = _ft("report_to"),
    log_grad_norms_every: int = _ft("log_grad_norms_every"),
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value for any config key (repeatable)."),
    ] = None,
) -> None:
    """Fine-tune Stable Diffusion on reference images: DreamBooth + prior preservation + SFSL."""
    from spurcli.config import FinetuneConfig, load_config
    from spurcli.diffusion import RUN_FILE, RUN_PIPELINE_DIR
    from spurcli.experiment import TABLES, finetune_config, is_experiment_config
    from spurcli.finetune import finetune

    options = _given(ctx, FinetuneConfig)
    if config is not None and config.is_file() and is_experiment_config(config):
        cfg = finetune_config(config, sets or (), options)  # as `spurcli run` trains it
    else:
        cfg = load_config(
            FinetuneConfig,
            config,
            section="finetune",
            sets=sets or (),
            overrides=options,
            tables=TABLES,  # a misspelled [finetun] is an error here too
        )
    out = finetune(cfg)
    if console.is_main_process():
        run = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
        losses = ", ".join(f"{k} {v:.4f}" for k, v in run.get("final_losses", {}).items())
        result = (
            f"LoRA adapters in {out / 'lora'}"
            if run.get("lora")
            else f"pipeline in {out / RUN_PIPELINE_DIR}"
        )
        console.stdout.print(
            terminal(f"{out}: {run['steps_done']} steps; {losses}; {result}"),
            markup=False,
            highlight=False,
        )


def main() -> None:
    """Entry point: runs the app, turning expected errors into one line and an exit code.

    Typer runs in standalone mode, so it prints its own usage errors (exit 2) and handles
    --help, --version and ``typer.Exit(code)``; everything else that escapes a command is ours.
    """
    previous = _sigterm_interrupts()
    try:
        from spurcli.plugins import get_plugins

        console.configure()  # so plugin-loading warnings look like every other log line
        get_plugins().register_commands(app)
        app()
    except SpurcliError as exc:
        _fail(str(exc), exc.exit_code)
    except (KeyboardInterrupt, Signalled):
        _fail("interrupted; finished results are kept: run the same command to continue", 130)
    except OSError as exc:  # a full disk, a read-only or vanished path, something in the way
        from spurcli.errors import describe_os_error

        _fail(describe_os_error(exc), 1)
    except Exception as exc:
        text = " ".join(str(exc).split())  # a bug's message may span lines; keep one
        _fail(f"{type(exc).__name__}: {text} (run with -v for the traceback)", 1)
    finally:
        import signal

        for signum, handler in previous.items():  # main() may run inside another program
            signal.signal(signum, handler)


def _sigterm_interrupts() -> dict[int, object]:
    """Ctrl-C and SIGTERM (kill, a batch system's time limit) end every command with one line
    and exit 130, temporaries removed by the unwinding ``finally`` blocks. Without this SIGTERM
    kills Python silently and Typer turns Ctrl-C into a silent exit 130. The training loop
    installs its own handler while it runs (checkpoint, then stop)."""
    import signal
    import threading

    def interrupt(signum: int, frame: object) -> None:
        raise Signalled(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}


def _fail(message: str, code: int) -> None:
    if _state["verbose"]:
        traceback.print_exc()
    # escape: messages quote user input and file names, which rich would read as markup;
    # soft_wrap: one line however long, so that scripts can grep it.
    console.stderr.print(
        f"[red]error:[/] {rich_text(message)}", markup=True, highlight=False, soft_wrap=True
    )
    sys.exit(code)
