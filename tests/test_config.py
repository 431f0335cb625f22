"""Settings declared once (`spurcli.settings.option`): the CLI options, --help, the bounds check
and docs/settings.md all derive from the config fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from spurcli import cli
from spurcli.cli import commands, settings_doc
from spurcli.errors import SpurcliError, UsageError
from spurcli.evaluate.config import CompareConfig, CurateConfig, ImagePass, ScoreConfig
from spurcli.generate.config import FinetuneConfig, SampleConfig
from spurcli.settings import check_fields, option, option_flags

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ROOT / "docs" / "settings.md"


def test_settings_reference_is_up_to_date():
    assert SETTINGS.read_text(encoding="utf-8") == settings_doc.settings_markdown(), (
        "docs/settings.md is out of date: "
        "python -m spurcli.cli.settings_doc --write-docs docs/settings.md"
    )


def test_the_documented_command_writes_the_reference(tmp_path):
    settings_doc.settings_docs_main(["--write-docs", str(tmp_path / "settings.md")])
    assert (tmp_path / "settings.md").read_text(
        encoding="utf-8"
    ) == settings_doc.settings_markdown()


def _literal(text: str, hint: object) -> tuple[bool, object]:
    """A default cell of docs/finetune.md's table as a value, when it is a plain literal."""
    quoted = text.strip().startswith("`")  # `cosine` is a value; full, random describe one
    text = text.strip().strip("`")
    if text in ("on", "off") and hint is bool:
        return True, text == "on"
    if text == "none" and not quoted:  # `none` (quoted) is the string, e.g. --report-to none
        return True, None
    for kind in (int, float):
        try:
            return True, kind(text)
        except ValueError:
            pass
    if quoted and text.replace("-", "").replace("_", "").replace(".", "").isalnum():
        return True, text
    return False, None


def test_the_finetune_guide_states_the_defaults_the_code_has():
    """docs/finetune.md explains the defaults in a table of its own: every plain value in it must
    be the field's default (settings.md, generated, is the reference; this keeps the guide true)."""
    import typing

    hints = typing.get_type_hints(FinetuneConfig)
    by_flag = {}
    for fld in dataclasses.fields(FinetuneConfig):
        for flag in option_flags(fld, hints[fld.name]):
            by_flag[flag.split("/")[0]] = fld
    checked = 0
    guide = (ROOT / "docs" / "finetune.md").read_text(encoding="utf-8")
    for line in guide.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`--"):
            continue
        flags = [f.strip("`").split("/")[0] for f in cells[0].replace(" / ", ", ").split(", ")]
        defaults = cells[1].replace(" / ", ", ").split(", ")
        if len(flags) != len(defaults):
            continue
        for flag, text in zip(flags, defaults, strict=True):
            fld = by_flag[flag]  # a flag the code does not have fails here
            plain, value = _literal(text, hints[fld.name])
            # a bool pair's default by the word of its flag: "random" of --center-crop/--random-crop
            words = [f[2:].split("-")[0] for f in option_flags(fld, bool)[0].split("/")]
            if hints[fld.name] is bool and len(words) == 2 and text in words:
                plain, value = True, text == words[0]
            if not plain:
                continue
            factory = fld.default_factory
            default = fld.default if factory is dataclasses.MISSING else factory()
            assert value == default or (isinstance(default, float) and value == float(default)), (
                f"docs/finetune.md says {flag} defaults to {text}; the code says {default!r}"
            )
            checked += 1
    assert checked >= 25  # the table is parsed, not skipped


@dataclass
class Bounded:
    count: int = option(1, "A count.", min=1)
    size: int = option(0, "A size.", min=0)
    rate: float | None = option(None, "A rate.", above=0)
    share: float = option(0.0, "A share.", min=0, below=1)
    name: str | None = option(None, "A name.", required=True)
    items: list[str] = option([], "Items.")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": None}, "--name is required (or `name` in the config)"),
        ({"count": 0}, "--count must be at least 1, not 0"),
        ({"size": -1}, "--size must not be negative, not -1"),
        ({"rate": 0.0}, "--rate must be positive, not 0.0"),
        ({"share": 1.0}, "--share must be below 1, not 1.0"),
        ({"share": float("nan")}, "--share must be a finite number, not nan"),
    ],
)
def test_declared_bounds_are_checked_with_one_line(changes, message):
    cfg = dataclasses.replace(Bounded(name="x"), **changes)
    with pytest.raises(UsageError) as info:
        check_fields(cfg)
    assert str(info.value) == message


def test_a_field_declaration_holds_default_help_and_its_own_list():
    a, b = Bounded(), Bounded()
    a.items.append("x")
    assert b.items == []  # a list default is copied per config, not shared
    fld = {f.name: f for f in dataclasses.fields(Bounded)}["count"]
    assert fld.default == 1 and fld.metadata["help"] == "A count." and fld.metadata["min"] == 1
    check_fields(Bounded(name="x"))  # the defaults are within bounds


def test_finetune_options_take_help_and_default_from_the_fields():
    command = typer.main.get_command(cli.app).commands["finetune"]  # type: ignore[attr-defined]
    params = {p.name: p for p in command.params}
    for fld in dataclasses.fields(FinetuneConfig):
        param = params[fld.name]
        assert param.help.startswith(fld.metadata["help"]), fld.name
        want = None if fld.default is dataclasses.MISSING else fld.default
        assert param.default == want, fld.name  # what --help shows is the real default
    assert params["steps"].default == 800 and params["steps"].show_default
    assert "--random-crop" in params["center_crop"].secondary_opts
    assert "-o" in params["output_dir"].opts


def test_every_finetune_default_passes_its_own_bounds():
    cfg = FinetuneConfig(
        instance_dir=Path("r"), class_noun="flower", target=94, output_dir=Path("o")
    )
    check_fields(cfg)


def test_only_typed_options_override_the_file(cli_main, monkeypatch, tmp_path):
    """An option typed with its default value still wins over the file; one not typed does not."""
    seen: list[FinetuneConfig] = []

    def capture(cfg: FinetuneConfig, **_: object) -> Path:
        seen.append(cfg)
        raise SpurcliError("stop here")

    monkeypatch.setattr("spurcli.generate.finetune.finetune", capture)
    (tmp_path / "exp.toml").write_text(
        '[finetune]\nsteps = 5\nlr = 1e-4\ncenter_crop = true\nlora_targets = ["to_q"]\n'
    )
    code, _, err = cli_main("finetune", str(tmp_path / "exp.toml"), "--steps", "800")
    assert code == 1 and "stop here" in err
    cfg = seen[-1]
    assert (cfg.steps, cfg.lr, cfg.center_crop, cfg.lora_targets) == (800, 1e-4, True, ["to_q"])
    code, _, _ = cli_main("finetune", str(tmp_path / "exp.toml"), "--random-crop")
    assert code == 1 and seen[-1].center_crop is False and seen[-1].steps == 5


# --- sample --config / --set --------------------------------------------------------------------


@pytest.fixture
def sampled(monkeypatch):
    """The SampleConfigs `spurcli sample` would sample (it stops right there)."""
    seen: list[SampleConfig] = []

    def capture(cfg: SampleConfig, **_: object) -> None:
        seen.append(cfg)
        raise SpurcliError("stop here")

    monkeypatch.setattr("spurcli.generate.sample.sample", capture)
    return seen


def test_every_sample_setting_is_an_option():
    import inspect

    params = set(inspect.signature(commands.sample_command).parameters)
    assert {f.name for f in dataclasses.fields(SampleConfig)} <= params


def test_sample_reads_a_config_table_and_sets(cli_main, sampled, tmp_path):
    (tmp_path / "s.toml").write_text(
        'model = "tiny"\n[sample]\nprompts = ["a red flower"]\nn = 2\nsteps = 3\nout = "imgs"\n'
        "recontext = true\n"
    )
    code, _, err = cli_main(
        "sample", "--config", str(tmp_path / "s.toml"), "--set", "steps=5", "-n", "1"
    )
    assert code == 1 and "stop here" in err
    cfg = sampled[-1]
    assert (cfg.model, cfg.prompts, cfg.n, cfg.steps) == ("tiny", ["a red flower"], 1, 5)
    assert cfg.out == tmp_path / "imgs" and cfg.recontext is True  # relative to the file
    code, _, _ = cli_main("sample", "mini", "--config", str(tmp_path / "s.toml"), "-p", "x")
    assert code == 1 and (sampled[-1].model, sampled[-1].prompts) == ("mini", ["x"])


def test_sample_without_a_config_is_as_before(cli_main, sampled, tmp_path):
    code, _, _ = cli_main(
        "sample", "tiny", "-p", "a", "-p", "b", "--steps", "2", "-o", str(tmp_path)
    )
    assert code == 1
    cfg = sampled[-1]
    assert (cfg.prompts, cfg.steps, cfg.n, cfg.guidance) == (["a", "b"], 2, 4, 7.5)


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("[sample]\nstesp = 3\n", [], "unknown option 'stesp'; did you mean steps"),
        ("[sampel]\nsteps = 3\n", ["tiny"], "unknown table [sampel]; did you mean [sample]"),
        ('[sample]\nprompts = ["x"]\n', [], "MODEL is required"),
        ("[sample]\nn = 'many'\n", ["tiny"], "n: expected an integer"),
    ],
)
def test_bad_sample_configs_are_one_line(cli_main, sampled, tmp_path, text, args, message):
    (tmp_path / "s.toml").write_text(text)
    code, _, err = cli_main("sample", *args, "--config", str(tmp_path / "s.toml"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sampled == []


# --- score --config / --set ---------------------------------------------------------------------


@pytest.fixture
def scored(monkeypatch):
    """The ScoreConfigs `spurcli score` would score with (it stops right there)."""
    seen: list[tuple[ScoreConfig, Path]] = []

    def capture(cfg: ScoreConfig, images_dir: Path) -> None:
        seen.append((cfg, Path(images_dir)))
        raise SpurcliError("stop here")

    monkeypatch.setattr("spurcli.evaluate.score.score", capture)
    return seen


def test_every_score_setting_is_an_option():
    import inspect

    params = set(inspect.signature(commands.score_command).parameters)
    assert {f.name for f in dataclasses.fields(ScoreConfig)} <= params


def test_score_reads_a_config_table_and_sets(cli_main, scored, tmp_path):
    (tmp_path / "s.toml").write_text(
        '[score]\ntarget = "hummingbird"\nclassifiers = ["resnet", "vit"]\nreal = "real"\n'
        "batch_size = 8\nbootstrap = 0\n"
    )
    args = ["score", str(tmp_path), "--config", str(tmp_path / "s.toml")]
    code, _, err = cli_main(*args, "--set", "image_size=224", "-b", "4")
    assert code == 1 and "stop here" in err
    cfg, images = scored[-1]
    assert images == tmp_path and cfg.target == "hummingbird" and cfg.real == tmp_path / "real"
    assert (cfg.classifiers, cfg.batch_size, cfg.image_size, cfg.bootstrap) == (
        ["resnet", "vit"],
        4,
        224,
        0,
    )
    code, _, _ = cli_main(*args, "-c", "clip, resnet", "--workers", "0")
    assert code == 1 and scored[-1][0].classifiers == ["clip", "resnet"]
    assert scored[-1][0].num_workers == 0


def test_score_without_a_config_is_as_before(cli_main, scored, tmp_path):
    code, _, _ = cli_main("score", str(tmp_path), "-t", "94", "-c", "det-r", "--seed", "3")
    assert code == 1
    cfg, _ = scored[-1]
    assert (cfg.target, cfg.classifiers, cfg.bootstrap_seed, cfg.batch_size) == (
        "94",
        ["det-r"],
        3,
        32,
    )
    assert (cfg.layout, cfg.image_size, cfg.bootstrap, cfg.strict) == ("folder", 384, 1000, False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[score]\nclasifiers = ['a']\n", "unknown option 'clasifiers'; did you mean classifiers"),
        ("[scroe]\ntarget = 94\n", "unknown table [scroe]; did you mean [score]"),
        ("[score]\nbatch_size = 'big'\n", "batch_size: expected an integer"),
    ],
)
def test_bad_score_configs_are_one_line(cli_main, scored, tmp_path, text, message):
    (tmp_path / "s.toml").write_text(text)
    code, _, err = cli_main("score", str(tmp_path), "--config", str(tmp_path / "s.toml"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert scored == []


def test_score_settings_are_checked_in_the_config():
    with pytest.raises(UsageError, match="--image-size must be at least 8, not 4"):
        ScoreConfig(image_size=4).check()
    with pytest.raises(UsageError, match="--workers must not be negative"):
        ScoreConfig(num_workers=-1).check()
    with pytest.raises(UsageError, match="--bootstrap must be 0"):
        ScoreConfig(bootstrap=-1).check()


# --- compare --config / --set -------------------------------------------------------------------


@pytest.fixture
def compared(monkeypatch):
    """The CompareConfigs `spurcli compare` would compare with (it stops right there)."""
    seen: list[CompareConfig] = []

    def capture(a: Path, b: Path, cfg: CompareConfig, **_: object) -> None:
        seen.append(cfg)
        raise SpurcliError("stop here")

    monkeypatch.setattr("spurcli.evaluate.compare.compare", capture)
    return seen


def test_every_compare_setting_is_an_option():
    import inspect

    params = set(inspect.signature(commands.compare_command).parameters)
    assert {f.name for f in dataclasses.fields(CompareConfig)} <= params


def test_compare_reads_a_run_configs_table(cli_main, compared, tmp_path):
    (tmp_path / "run.toml").write_text(
        'out = "exp"\ntarget = 94\n[finetune]\nsteps = 3\n'
        '[compare]\nclassifiers = ["resnet", "clip"]\nbootstrap = 10\npaired = "no"\n'
    )
    args = ["compare", str(tmp_path), str(tmp_path), "--config", str(tmp_path / "run.toml")]
    code, _, err = cli_main(*args, "--set", "report_images=5", "-e", "")
    assert code == 1 and "stop here" in err
    cfg = compared[-1]
    assert (cfg.target, cfg.classifiers, cfg.bootstrap, cfg.paired) == (
        94,
        ["resnet", "clip"],
        10,
        "no",
    )
    assert (cfg.report_images, cfg.extractors) == (5, [])  # -e '': no feature spaces
    code, _, _ = cli_main("compare", str(tmp_path), str(tmp_path), "-t", "94", "-c", "a,b")
    assert code == 1 and compared[-1].extractors == ["robust-resnet50"]  # the default
    assert compared[-1].classifiers == ["a", "b"]


# --- curate --config / --set --------------------------------------------------------------------


def test_every_curate_setting_is_an_option_but_two():
    import inspect

    from spurcli.evaluate.config import CurateConfig

    params = set(inspect.signature(commands.curate_command).parameters)
    # mode is --link/--copy; report_images serves the report of `spurcli run` only.
    assert {f.name for f in dataclasses.fields(CurateConfig)} - params == {"mode", "report_images"}


def test_curate_reads_a_config_table(cli_main, monkeypatch, tmp_path):
    seen = []

    def capture(images_dir, out, cfg):
        seen.append(cfg)
        raise SpurcliError("stop here")

    monkeypatch.setattr("spurcli.evaluate.curate.curate", capture)
    (tmp_path / "c.toml").write_text(
        '[curate]\ntarget = 94\nclassifiers = ["a", "b"]\nmin_fooled = 2\nmode = "link"\n'
    )
    base = [
        "curate",
        str(tmp_path),
        "-o",
        str(tmp_path / "d"),
        "--config",
        str(tmp_path / "c.toml"),
    ]
    code, _, err = cli_main(*base, "--set", "limit=3", "-d", "none")
    assert code == 1 and "stop here" in err
    cfg = seen[-1]
    assert (cfg.target, cfg.classifiers, cfg.min_fooled, cfg.limit) == (94, ["a", "b"], 2, 3)
    assert (cfg.mode, cfg.detectors) == ("link", ["none"])
    code, _, _ = cli_main(*base, "--copy")
    assert code == 1 and seen[-1].mode == "copy" and seen[-1].detectors == ["owlv2"]


def test_image_pass_settings_are_one_block_shared_by_every_scoring_command():
    names = [f.name for f in dataclasses.fields(ImagePass)]
    for cls in (ScoreConfig, CompareConfig, CurateConfig):
        assert issubclass(cls, ImagePass)
        assert [f.name for f in dataclasses.fields(cls)][: len(names)] == names
    # the image pass takes any of them as it is
    compare = CompareConfig(target=94, classifiers=["a"], batch_size=4, device="cpu", strict=True)
    assert (compare.batch_size, compare.image_size) == (4, ImagePass().image_size)


def test_set_none_unsets_an_option_a_config_file_gave(tmp_path):
    from spurcli.settings import load_config

    (tmp_path / "f.toml").write_text("sfsl_max_timestep = 300\nsteps = 5\n")
    given = load_config(FinetuneConfig, tmp_path / "f.toml")
    unset = load_config(FinetuneConfig, tmp_path / "f.toml", sets=["sfsl_max_timestep=none"])
    assert (given.sfsl_max_timestep, unset.sfsl_max_timestep, unset.steps) == (300, None, 5)
    with pytest.raises(UsageError, match="expected an integer"):  # steps cannot be none
        load_config(FinetuneConfig, tmp_path / "f.toml", sets=["steps=none"])
