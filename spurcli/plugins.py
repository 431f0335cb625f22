"""Plugin loading and the model registries (classifiers, feature extractors, detectors).

    from spurcli import plugins
    plugins.classifiers().names("resnet*")          # wildcard listing, like timm.list_models
    model = plugins.classifiers().load("resnet", weights="random")
    model.module(images)                            # (B,1000) logits; model.weights says "random"
    model.weights_id                                # {"source": "random"}; a file: path + sha256
    models = plugins.load_classifiers(["resnet", "clip"], {"resnet": "ckpt.safetensors"})
    plugins.parse_weights(["resnet=ckpt.pt", "clip=random"])   # --weights NAME=PATH -> dict

Every model family, the built-in ones included, arrives through the entry-point group ``spurcli``
exactly as a third party's would. Entry points are loaded one at a time, so a plugin that fails
to import is a warning and the rest still work. ``SPURCLI_LOAD_PLUGINS=a,b`` restricts loading to
those distributions (empty string: none); tests use it to keep the environment predictable.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from spurcli import hookspecs
from spurcli import weights as weights_module
from spurcli.errors import SpurcliError, UsageError

log = logging.getLogger(__name__)

FAMILY_SUFFIX = ":*"  # "timm:*" registers every "timm:<variant>"


@dataclass(frozen=True)
class Entry:
    """One registered name: a model or an open family of models."""

    name: str
    factory: Callable[..., Any]
    plugin: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    default_weights: str | None = None

    @property
    def is_family(self) -> bool:
        return self.name.endswith(FAMILY_SUFFIX)


@dataclass
class LoadedModel:
    """A model built by a plugin's factory, with what produced it (reported in every result)."""

    name: str  # the name the user asked for, e.g. "timm:resnet18"
    module: Any  # torch.nn.Module
    weights: str  # "random", a path, or the plugin's default source
    plugin: str
    # Which weights exactly (JSON-ready, see `spurcli.weights.identify`): {"source": "hub",
    # "repo", "revision": <commit>, "file"}, {"source": "file", "path", "sha256"}, "random", ...
    weights_id: dict[str, Any] = field(default_factory=dict)

    @property
    def is_random(self) -> bool:
        return self.weights == "random"


@dataclass
class Registry:
    """Names -> factories for one kind of model ("classifier", "feature extractor", "detector")."""

    kind: str
    option: str = "--weights"  # the command-line option that gives these models' weights
    plural: str = "models"  # what error messages call several of them ("classifiers")
    entries: dict[str, Entry] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def add(self, entry: Entry) -> None:
        for key in (entry.name, *entry.aliases):
            owner = self.entries.get(key) or self.entries.get(self.aliases.get(key, ""))
            if owner is not None:
                raise SpurcliError(
                    f"{self.kind} name '{key}' is registered twice: by plugin '{owner.plugin}' "
                    f"and by plugin '{entry.plugin}'; uninstall one of them or restrict "
                    "SPURCLI_LOAD_PLUGINS"
                )
        self.entries[entry.name] = entry
        for alias in entry.aliases:
            self.aliases[alias] = entry.name

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names (families shown as ``prefix:*``), filtered by an fnmatch wildcard."""
        names = sorted(self.entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return names

    def resolve(self, name: str) -> tuple[Entry, str | None]:
        """The entry behind ``name`` and, for a family, the variant after the colon."""
        name = name.strip()
        key = self.aliases.get(name, name)
        if key in self.entries and not self.entries[key].is_family:
            return self.entries[key], None
        prefix, sep, variant = name.partition(":")
        family = self.entries.get(prefix + FAMILY_SUFFIX)
        if sep and family is not None and variant:
            return family, variant
        raise UsageError(self._unknown_message(name))

    def load(self, name: str, weights: str | os.PathLike[str] | None = None) -> LoadedModel:
        """Build the model ``name`` with ``weights`` (None: the plugin's default source)."""
        entry, variant = self.resolve(name)
        weights = os.fspath(weights) if weights is not None else None
        if weights is not None and weights != "random" and not os.path.exists(weights):
            raise SpurcliError(f"weights file for {self.kind} '{name}' not found: {weights}")
        args = (weights,) if variant is None else (weights, variant)
        with weights_module.recording() as recorded:  # what hub_file/record saw, for weights_id
            module = entry.factory(*args)
        if module is None or not callable(module):
            raise SpurcliError(
                f"plugin '{entry.plugin}' returned {type(module).__name__} for {self.kind} "
                f"'{name}', not a torch.nn.Module"
            )
        label = (entry.default_weights or "default") if weights is None else weights
        identity = weights_module.identify(weights, recorded, entry.default_weights)
        return LoadedModel(
            name=name, module=module, weights=label, plugin=entry.plugin, weights_id=identity
        )

    def load_all(
        self, names: Sequence[str | LoadedModel], weights: dict[str, str] | None = None
    ) -> list[LoadedModel]:
        """Resolve every name first (an unknown one fails before anything heavy loads), then load.

        ``weights`` (given by `option` on the command line) maps a name to a local file or
        ``"random"``; others get their plugin's default. Already loaded models pass through
        unchanged.
        """
        weights = dict(weights or {})
        wanted = [n if isinstance(n, str) else n.name for n in names]
        duplicates = sorted({n for n in wanted if wanted.count(n) > 1})
        if duplicates:
            raise UsageError(f"{self.plural} listed twice: {', '.join(duplicates)}")
        unused = [n for n in weights if n not in wanted]
        if unused:
            raise UsageError(
                f"{self.option} given for {', '.join(unused)}, which is not among the "
                f"{self.plural} ({', '.join(wanted) or 'none'})"
            )
        for name in names:
            if isinstance(name, str):
                self.resolve(name)
            elif name.name in weights:
                raise UsageError(f"'{name.name}' is already loaded; its weights are fixed")
        with weights_module.weights_option(self.option):
            return [self.load(n, weights.get(n)) if isinstance(n, str) else n for n in names]

    def _unknown_message(self, name: str) -> str:
        candidates = list(self.entries) + list(self.aliases)
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
        if not close:
            close = [c for c in candidates if name.lower() in c.lower()][:3]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        families = [n for n in self.entries if n.endswith(FAMILY_SUFFIX)]
        if families and not close:
            hint += f" (open families: {', '.join(f[:-1] + '<name>' for f in families)})"
        return f"unknown {self.kind} '{name}'{hint} (see `spurcli plugins`)"


@dataclass
class PluginInfo:
    name: str  # the distribution (or, for plugins registered in code, the module) name
    version: str | None
    classifiers: list[str] = field(default_factory=list)
    extractors: list[str] = field(default_factory=list)
    detectors: list[str] = field(default_factory=list)


class Plugins:
    """The plugin manager plus the registries filled from its hooks.

    A broken third-party plugin (import error, misspelled hook, a hook that raises) is recorded in
    ``failed``, logged once as a one-line warning and skipped; the other plugins keep working.
    A plugin registered in code (``register``) fails loudly instead: that is the author testing it.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.failed: dict[str, str] = {}  # plugin -> why it did not load
        self.versions: dict[str, str | None] = {}
        self._classifiers: Registry | None = None
        self._extractors: Registry | None = None
        self._detectors: Registry | None = None

    def load_entry_points(self, only: Iterable[str] | None = None) -> None:
        """Import and register the ``spurcli`` entry points, one at a time.

        ``only``: distribution (or entry-point) names to load, spelled as pip would accept them;
        None loads all.
        """
        wanted = None if only is None else {_canonical(n) for n in only if n.strip()}
        seen: set[str] = set()
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            dist = ep.dist.name if ep.dist is not None else ep.name
            seen.update({_canonical(dist), _canonical(ep.name)})
            if wanted is not None and not {_canonical(dist), _canonical(ep.name)} & wanted:
                continue
            # A distribution may declare several entry points: the second gets its own name.
            name = dist if not self.pm.has_plugin(dist) else f"{dist}:{ep.name}"
            if self.pm.has_plugin(name):
                continue  # the same distribution found twice on sys.path
            try:
                module = ep.load()
                self.pm.register(module, name=name)
            except Exception as exc:  # a broken plugin must not break the tool
                self._skip(name, f"failed to load ({_one_line(exc)})")
                continue
            problem = self._validate(name)
            if problem:
                self.pm.unregister(name=name)
                self._skip(name, problem)
                continue
            self.versions[name] = ep.dist.version if ep.dist is not None else None
        for missing in sorted((wanted or set()) - seen):
            log.warning(
                "SPURCLI_LOAD_PLUGINS names '%s', which is not an installed spurcli plugin",
                missing,
            )
        self.pm.check_pending()  # every plugin was validated above: this only guards the invariant

    def register(self, module: Any, name: str | None = None) -> None:
        """Register a plugin object directly (tests, and code that embeds spurcli).

        Raises `SpurcliError` (one line) for an invalid plugin, e.g. a misspelled hook name.
        """
        try:
            name = self.pm.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            raise SpurcliError(f"plugin {name or module!r} is invalid: {_one_line(exc)}") from None
        problem = self._validate(name)
        if problem:
            self.pm.unregister(name=name)
            raise SpurcliError(f"plugin '{name}' {problem}")
        self._classifiers = self._extractors = self._detectors = None

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._classifiers = self._extractors = self._detectors = None

    def _validate(self, name: str | None) -> str | None:
        """Why the plugin just registered as ``name`` is unusable (pm.check_pending), or None."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            plugin = self.pm.get_plugin(name) if name else None
            unknown = [
                hc.name
                for hc in self.pm.get_hookcallers(plugin) or []
                if not hc.has_spec()
                and any(i.plugin is plugin and not i.optionalhook for i in hc.get_hookimpls())
            ]
            if not unknown:
                return f"is invalid: {_one_line(exc)}"
            spec_names = _hook_names()
            guesses = difflib.get_close_matches(unknown[0], spec_names, n=1)
            hint = f"did you mean {guesses[0]}?" if guesses else f"hooks: {', '.join(spec_names)}"
            return f"has an unknown hook {', '.join(unknown)} ({hint})"
        plugin = self.pm.get_plugin(name) if name else None
        for hook in _hook_names():
            has_impl = any(i.plugin is plugin for i in getattr(self.pm.hook, hook).get_hookimpls())
            if callable(getattr(plugin, hook, None)) and not has_impl:
                # Not fatal (the function may be a helper), but almost always a forgotten marker.
                log.warning("plugin %s defines %s without @hookimpl: it is ignored", name, hook)
        return None

    def _skip(self, name: str, why: str) -> None:
        self.failed[name] = why
        log.warning("plugin %s %s; it is skipped", name, why)

    def _fill(self, kind: str, hook: Any, option: str, plural: str) -> Registry:
        registry = Registry(kind, option, plural)
        for impl in hook.get_hookimpls():  # registration order (pluggy calls them in reverse)
            plugin = impl.plugin_name
            entries: list[Entry] = []

            def register(
                name: str,
                factory: Callable[..., Any],
                *,
                aliases: Iterable[str] = (),
                description: str = "",
                default_weights: str | None = None,
                _plugin: str = plugin,
                _entries: list[Entry] = entries,
            ) -> None:
                if not isinstance(name, str) or not name.strip() or not callable(factory):
                    raise TypeError(
                        f"register({name!r}, {factory!r}) needs a name and a callable factory"
                    )
                aliases = (aliases,) if isinstance(aliases, str) else tuple(aliases)
                _entries.append(
                    Entry(name.strip(), factory, _plugin, aliases, description, default_weights)
                )

            try:
                impl.function(register=register)
            except Exception as exc:  # this plugin's models are unavailable; the rest work
                self._skip(plugin, f"failed to register {kind}s ({_one_line(exc)})")
                continue
            for entry in entries:
                registry.add(entry)  # a duplicate name is an error naming both plugins
        return registry

    def classifiers(self) -> Registry:
        if self._classifiers is None:
            self._classifiers = self._fill(
                "classifier", self.pm.hook.register_classifiers, "--weights", "classifiers"
            )
        return self._classifiers

    def extractors(self) -> Registry:
        if self._extractors is None:
            self._extractors = self._fill(
                "feature extractor",
                self.pm.hook.register_feature_extractors,
                "--extractor-weights",
                "extractors",
            )
        return self._extractors

    def detectors(self) -> Registry:
        if self._detectors is None:
            self._detectors = self._fill(
                "detector", self.pm.hook.register_detectors, "--detector-weights", "detectors"
            )
        return self._detectors

    def register_commands(self, app: Any) -> None:
        """Let each plugin add sub-commands to ``app``; one that raises is skipped (warning)."""
        for impl in self.pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(app=app)
            except Exception as exc:
                self._skip(impl.plugin_name, f"failed to add commands ({_one_line(exc)})")

    def info(self) -> list[PluginInfo]:
        """What each plugin registered, for `spurcli plugins`."""
        by_plugin: dict[str, PluginInfo] = {}
        for name, _module in self.pm.list_name_plugin():
            by_plugin[name] = PluginInfo(name, self.versions.get(name))
        for entry in self.classifiers().entries.values():
            by_plugin[entry.plugin].classifiers.append(entry.name)
        for entry in self.extractors().entries.values():
            by_plugin[entry.plugin].extractors.append(entry.name)
        for entry in self.detectors().entries.values():
            by_plugin[entry.plugin].detectors.append(entry.name)
        return sorted(by_plugin.values(), key=lambda p: p.name)


def _canonical(name: str) -> str:
    """Distribution names compare like pip compares them: case and -_. runs do not matter."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (plugin errors go into one-line warnings)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith("register_"))


_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded from entry points on first use."""
    global _plugins
    if _plugins is None:
        _plugins = Plugins()
        only = os.environ.get("SPURCLI_LOAD_PLUGINS")
        _plugins.load_entry_points(None if only is None else only.split(","))
    return _plugins


def reset_plugins() -> None:
    """Forget loaded plugins so the next `get_plugins()` reloads (tests)."""
    global _plugins
    _plugins = None


def classifiers() -> Registry:
    return get_plugins().classifiers()


def extractors() -> Registry:
    return get_plugins().extractors()


def detectors() -> Registry:
    return get_plugins().detectors()


# Models by name, as the commands load them


def parse_weights(pairs: Sequence[str], option: str = "--weights") -> dict[str, str]:
    """``["resnet=ckpt.pt", "clip=random"]`` (the repeatable ``--weights NAME=PATH``, or
    another ``option`` of that format such as ``--extractor-weights``) -> dict."""
    weights: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UsageError(f"{option} expects NAME=PATH (or NAME=random), got '{pair}'")
        if name.strip() in weights:
            raise UsageError(f"{option} given twice for '{name.strip()}'")
        weights[name.strip()] = path.strip()
    return weights


def load_classifiers(
    names: Sequence[str | LoadedModel], weights: dict[str, str] | None = None
) -> list[LoadedModel]:
    """Classifiers by name (see `Registry.load_all`); at least one is required."""
    if not names:
        raise UsageError("--classifiers is required, e.g. --classifiers resnet,vit,clip")
    return classifiers().load_all(names, weights)


def load_extractors(
    names: Sequence[str | LoadedModel], weights: dict[str, str] | None = None
) -> list[LoadedModel]:
    """Feature extractors by name (see `Registry.load_all`); none is fine."""
    return extractors().load_all(names, weights)


def load_detectors(
    names: Sequence[str | LoadedModel], weights: dict[str, str] | None = None
) -> list[LoadedModel]:
    """Object-presence detectors by name (see `Registry.load_all`); none is fine."""
    return detectors().load_all(names, weights)
