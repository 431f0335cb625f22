"""The plugin system: registration in code, names, families, errors, and real entry points.

In-code tests build their own `Plugins()` (no entry points) so that the installed plugins do not
matter; entry-point tests write throwaway distributions and run `python -m spurcli` on them.
"""

from __future__ import annotations

import json
import logging

import pytest
from _plugin_helpers import make_distribution, make_plugin_module, run_spurcli

from spurcli import hookimpl, plugins
from spurcli.errors import SpurcliError, UsageError
from spurcli.plugins import Plugins, get_plugins


def factory(weights, variant=None):
    """A stand-in model: any callable is accepted, so the registry tests need no torch."""
    return lambda images: ("model", weights, variant)


@pytest.fixture
def pm() -> Plugins:
    plugins = Plugins()
    plugins.register(
        make_plugin_module(
            "zoo",
            classifiers={"resnet": factory, "resnext": factory, "vit": factory, "timm:*": factory},
            extractors={"resnet": factory},
            aliases={"resnet": ("rn50",)},
        ),
        name="zoo",
    )
    return plugins


# --- names, aliases, families ---------------------------------------------------------------


def test_load_by_name_alias_and_family(pm):
    classifiers = pm.classifiers()
    model = classifiers.load("resnet", weights="random")
    assert model.module(None) == ("model", "random", None)
    assert (model.name, model.weights, model.plugin, model.is_random) == (
        "resnet",
        "random",
        "zoo",
        True,
    )
    assert classifiers.load("rn50").module(None) == ("model", None, None)  # alias, default weights
    assert classifiers.load("rn50").weights == "default"
    family = classifiers.load("timm:resnet18.a1_in1k")
    assert family.module(None) == ("model", None, "resnet18.a1_in1k")
    # The variant keeps everything after the first colon (open_clip names have slashes too).
    assert classifiers.load("timm:hf-hub:org/model").module(None)[2] == "hf-hub:org/model"


def test_extractors_are_a_separate_registry(pm):
    assert pm.extractors().names() == ["resnet"]
    with pytest.raises(UsageError, match="unknown feature extractor 'vit'"):
        pm.extractors().load("vit")


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (None, ["resnet", "resnext", "timm:*", "vit"]),
        ("res*", ["resnet", "resnext"]),
        ("timm:*", ["timm:*"]),
        ("*t", ["resnet", "resnext", "vit"]),
        ("nothing*", []),
    ],
)
def test_names_wildcards(pm, pattern, expected):
    assert pm.classifiers().names(pattern) == expected


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("resnt", "did you mean resnet"),
        ("rn5", "did you mean rn50"),
        ("timm:", "unknown classifier 'timm:'"),  # a family needs a variant
        ("efficientnet", "open families: timm:<name>"),  # nothing close: show the families
    ],
)
def test_unknown_name_is_usage_error_with_suggestions(pm, name, hint):
    with pytest.raises(UsageError) as info:
        pm.classifiers().load(name)
    message = str(info.value)
    assert hint in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_missing_weights_file_is_clear_error(pm, tmp_path):
    missing = tmp_path / "nope.safetensors"
    expected = r"weights file for classifier 'resnet' not found: .*nope"
    with pytest.raises(SpurcliError, match=expected):
        pm.classifiers().load("resnet", weights=missing)


def test_local_weights_path_is_passed_to_the_factory(pm, tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"x")
    model = pm.classifiers().load("resnet", weights=path)  # a PathLike becomes a str
    assert model.module(None) == ("model", str(path), None)
    assert model.weights == str(path)


def test_factory_returning_nothing_names_the_plugin():
    plugins = Plugins()
    plugins.register(make_plugin_module("lazy", {"lazy": lambda weights: None}), name="lazy-dist")
    with pytest.raises(SpurcliError, match="plugin 'lazy-dist' returned NoneType"):
        plugins.classifiers().load("lazy")


def test_info_lists_each_plugins_models(pm):
    pm.register(make_plugin_module("other", extractors={"dino": factory}), name="other")
    info = {p.name: p for p in pm.info()}
    assert info["zoo"].classifiers == ["resnet", "resnext", "vit", "timm:*"]
    assert info["zoo"].extractors == ["resnet"]
    assert (info["other"].classifiers, info["other"].extractors) == ([], ["dino"])


# --- conflicts and broken plugins ----------------------------------------------------------


@pytest.mark.parametrize("clash", ["vit", "rn50"])
def test_duplicate_names_across_plugins_name_both(pm, clash):
    pm.register(make_plugin_module("copycat", {clash: factory}), name="copycat")
    with pytest.raises(SpurcliError) as info:
        pm.classifiers()
    message = str(info.value)
    assert f"'{clash}'" in message and "'zoo'" in message and "'copycat'" in message
    assert "SPURCLI_LOAD_PLUGINS" in message


def test_alias_clashing_with_another_plugins_name(pm):
    pm.register(make_plugin_module("b", {"b": factory}, aliases={"b": ("vit",)}), name="b-dist")
    with pytest.raises(SpurcliError, match=r"'vit' is registered twice.*'zoo'.*'b-dist'"):
        pm.classifiers()


def test_misspelled_hook_registered_in_code_is_a_one_line_error(pm):
    module = make_plugin_module("typo")

    @hookimpl
    def register_classifier(register):  # missing "s"
        register("typo", factory)

    module.register_classifier = register_classifier
    with pytest.raises(SpurcliError) as info:
        pm.register(module, name="typo")
    message = str(info.value)
    assert "register_classifier " in message and "did you mean register_classifiers?" in message
    assert "'typo'" in message and "\n" not in message
    # The invalid plugin is not left half-registered: everything else still works.
    assert not pm.pm.has_plugin("typo")
    assert pm.classifiers().names() == ["resnet", "resnext", "timm:*", "vit"]


def test_hookimpl_with_wrong_argument_is_a_one_line_error():
    module = make_plugin_module("wrongarg")

    @hookimpl
    def register_classifiers(reg):  # the hook's argument is called "register"
        reg("x", factory)

    module.register_classifiers = register_classifiers
    with pytest.raises(SpurcliError) as info:
        Plugins().register(module, name="wrongarg")
    assert "'wrongarg' is invalid" in str(info.value) and "\n" not in str(info.value)


def test_hook_that_raises_skips_only_that_plugin(pm, caplog):
    def boom(register):
        register("half", factory)  # registered before the failure: must not survive it
        raise RuntimeError("no [bold]GPU[/bold]\nsecond line")

    broken = make_plugin_module("broken")
    broken.register_classifiers = hookimpl(boom)
    pm.register(broken, name="broken")
    with caplog.at_level(logging.WARNING, logger="spurcli"):
        names = pm.classifiers().names()
    assert names == ["resnet", "resnext", "timm:*", "vit"]
    assert (
        "broken" in pm.failed
        and "RuntimeError: no [bold]GPU[/bold] second line" in (pm.failed["broken"])
    )
    warnings = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    pm.classifiers()  # cached: no second warning
    assert len([r for r in caplog.records if "broken" in r.getMessage()]) == 1


def test_register_with_bad_arguments_skips_the_plugin(pm, caplog):
    bad = make_plugin_module("bad", {"bad": "not-a-factory"})
    pm.register(bad, name="bad")
    with caplog.at_level(logging.WARNING, logger="spurcli"):
        assert "bad" not in pm.classifiers().names()
    assert "needs a name and a callable factory" in pm.failed["bad"]


def test_hook_function_without_marker_warns(caplog):
    module = make_plugin_module("unmarked")
    module.register_classifiers = lambda register: register("u", factory)  # no @hookimpl
    with caplog.at_level(logging.WARNING, logger="spurcli"):
        Plugins().register(module, name="unmarked")
    assert any("without @hookimpl" in r.getMessage() for r in caplog.records)


def test_register_commands_failure_is_skipped(caplog):
    import typer

    good = make_plugin_module("good")
    bad = make_plugin_module("bad")

    @hookimpl
    def good_commands(app):
        app.command("hello")(lambda: None)

    @hookimpl
    def bad_commands(app):
        raise ImportError("needs extra package")

    good.register_commands, bad.register_commands = good_commands, bad_commands
    plugins = Plugins()
    plugins.register(good, name="good")
    plugins.register(bad, name="bad")
    app = typer.Typer()
    with caplog.at_level(logging.WARNING, logger="spurcli"):
        plugins.register_commands(app)
    assert [c.name for c in app.registered_commands] == ["hello"]
    assert "ImportError: needs extra package" in plugins.failed["bad"]


# --- the fake_plugin fixture (shared with other test files) ---------------------------------


def test_fake_plugin_fixture_is_deterministic(fake_plugin):
    torch = pytest.importorskip("torch")
    from spurcli import plugins

    model = plugins.classifiers().load("fk")
    assert model.weights == "fake-default" and model.plugin == "fake-plugin"
    red = torch.zeros(2, 3, 16, 16)
    red[:, 0] = 1.0
    grey = torch.full((1, 3, 9, 7), 0.5)
    assert model.module(red).argmax(1).tolist() == [94, 94]
    assert model.module(grey).argmax(1).tolist() == [1]
    assert plugins.classifiers().load("fake:7").module(red).argmax(1).tolist() == [7, 7]
    with pytest.raises(UsageError, match="class index"):
        plugins.classifiers().load("fake:tabby")
    features = plugins.extractors().load("fake").module(red)
    assert features.shape == (2, 12) and plugins.extractors().load("fake").module.dim == 12
    assert ("fake", None, "7") in fake_plugin.calls


# --- real entry points (throwaway distributions, subprocesses) ------------------------------

GOOD = """
from spurcli import hookimpl

@hookimpl
def register_classifiers(register):
    register("ep-good", lambda weights: None, aliases=("epg",))

@hookimpl
def register_feature_extractors(register):
    register("ep-good-features", lambda weights: None)
"""

BROKEN = """
raise RuntimeError("cannot import [bold]this[/bold]\\nsecond line of the reason")
"""

MISSPELLED = """
from spurcli import hookimpl

@hookimpl
def register_classifier(register):
    register("never", lambda weights: None)
"""


def plugins_json(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_entry_points_good_broken_and_misspelled(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "ep-good", "ep_good", GOOD, version="2.5")
    make_distribution(site, "ep-broken", "ep_broken", BROKEN)
    make_distribution(site, "ep-typo", "ep_typo", MISSPELLED)
    result = run_spurcli(["plugins", "--json"], site=site)
    data = plugins_json(result)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["ep-good"] == {
        "name": "ep-good",
        "version": "2.5",
        "classifiers": ["ep-good"],
        "extractors": ["ep-good-features"],
        "detectors": [],
    }
    assert "spurcli-plugin-template" in by_name  # installed plugins still load
    assert "ep-broken" not in by_name and "ep-typo" not in by_name
    reason = "RuntimeError: cannot import [bold]this[/bold] second line"
    assert reason in data["failed"]["ep-broken"]
    assert "did you mean register_classifiers?" in data["failed"]["ep-typo"]
    # Each failure is one warning line on stderr, printed once, with no traceback.
    stderr_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len([line for line in stderr_lines if "ep-broken" in line]) == 1
    assert len([line for line in stderr_lines if "ep-typo" in line]) == 1
    assert "Traceback" not in result.stderr


def test_failed_plugin_shows_in_table_not_twice_on_stderr(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "ep-broken", "ep_broken", BROKEN)
    result = run_spurcli(["plugins"], site=site)
    assert result.returncode == 0, result.stderr
    assert "ep-broken" in result.stdout and "failed" in result.stdout
    assert "[bold]this[/bold]" in result.stdout  # third-party text is not rendered as markup
    assert result.stderr.count("ep-broken") == 1


def test_spurcli_load_plugins_restricts_and_normalises_names(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "ep-good", "ep_good", GOOD)
    make_distribution(site, "ep-broken", "ep_broken", BROKEN)
    only_good = run_spurcli(["plugins", "--json"], site=site, SPURCLI_LOAD_PLUGINS="EP_Good")
    data = plugins_json(only_good)
    assert [p["name"] for p in data["plugins"]] == ["ep-good"]
    assert data["failed"] == {}  # the broken one was never imported
    assert "ep-broken" not in only_good.stderr

    none = plugins_json(run_spurcli(["plugins", "--json"], site=site, SPURCLI_LOAD_PLUGINS=""))
    assert none == {"plugins": [], "failed": {}}

    typo = run_spurcli(["plugins", "--json"], site=site, SPURCLI_LOAD_PLUGINS="ep-good,ep-goood")
    assert [p["name"] for p in plugins_json(typo)["plugins"]] == ["ep-good"]
    assert "'ep-goood', which is not an installed spurcli plugin" in typo.stderr


def test_duplicate_names_across_distributions_is_one_line_error(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "ep-good", "ep_good", GOOD)
    make_distribution(site, "ep-clone", "ep_clone", GOOD.replace('aliases=("epg",)', ""))
    result = run_spurcli(["plugins", "--json"], site=site)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'ep-good' is registered twice" in lines[0]
    assert "'ep-good'" in lines[0] and "'ep-clone'" in lines[0]


def test_in_process_spurcli_load_plugins(monkeypatch):
    monkeypatch.setenv("SPURCLI_LOAD_PLUGINS", "")
    assert get_plugins().pm.list_name_plugin() == []
    from spurcli import plugins

    plugins.reset_plugins()
    monkeypatch.setenv("SPURCLI_LOAD_PLUGINS", "spurcli_plugin_template")
    assert [n for n, _ in get_plugins().pm.list_name_plugin()] == ["spurcli-plugin-template"]


def test_template_plugin_is_installed_and_works():
    """The third-party example (installed by `make install`) is found like any plugin and runs."""
    torch = pytest.importorskip("torch")
    from spurcli import plugins

    info = {p.name: p for p in plugins.get_plugins().info()}
    assert info["spurcli-plugin-template"].classifiers == ["template-linear"]
    model = plugins.classifiers().load("tl", weights="random")
    assert model.module(torch.rand(2, 3, 37, 50)).shape == (2, 1000)
    assert plugins.extractors().load("template-linear").module(torch.rand(1, 3, 8, 8)).shape == (
        1,
        192,
    )


def test_detectors_are_a_registry_like_the_others(fake_plugin):
    registry = plugins.detectors()
    assert "fake" in registry.names("fa*")
    info = {p.name: p for p in plugins.get_plugins().info()}
    assert info["fake-plugin"].detectors == ["fake"]
    assert plugins.detectors().load("fake", "random").is_random
    with pytest.raises(UsageError, match="unknown detector 'fkae'; did you mean fake"):
        registry.resolve("fkae")


def test_a_detector_hook_that_raises_skips_only_that_plugin(fake_plugin):
    from spurcli import hookimpl

    class Broken:
        @hookimpl
        def register_detectors(self, register):
            raise RuntimeError("no detectors today")

    plugins.get_plugins().register(Broken(), name="broken-detectors")
    assert plugins.detectors().names() and "fake" in plugins.detectors().names()
    assert "no detectors today" in plugins.get_plugins().failed["broken-detectors"]
