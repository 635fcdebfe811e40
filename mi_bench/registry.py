"""One registry mechanism for attacks, defenses, datasets and models.

Built-in plugins register themselves with a decorator when their module is imported. The
built-in attack and defense packages are *discovered*: every module of ``mi_bench.attacks`` /
``mi_bench.defenses`` (``attacks/``, ``defenses/`` in the repository) whose name does not start
with ``_`` is imported, so a new built-in plugin is one new file and nothing else. Third-party
plugins can also be single files named in ``MI_BENCH_PLUGINS`` (``.py`` files or folders of them,
separated by ``os.pathsep``): a new defense is then one file and nothing else. Third-party
packages add plugins through entry-point groups (``mi_bench.attacks``,
``mi_bench.defenses``, ``mi_bench.datasets``, ``mi_bench.models``; sweep launchers:
``mi_bench.launchers``). An entry point names a
class or function; importing it is enough when it uses the decorator, otherwise the loaded
object is registered under the entry point's name. A plugin that fails to load produces a
warning naming it and is skipped; everything else keeps working.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, TypeVar

from mi_bench.errors import RegistryError  # noqa: F401 - raised here; importable from here too

log = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, builtin_modules: tuple[str, ...]) -> None:
        self.kind = kind  # "attack", "defense", ...
        self.group = f"mi_bench.{kind}s"
        self._builtin_modules = builtin_modules
        self._items: dict[str, T] = {}
        self._loaded = False
        self.broken: dict[str, str] = {}  # entry-point name -> reason it failed to load

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Class/function decorator: ``@ATTACKS.register("gmi")``."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__")
            self._add(key, obj)
            return obj

        return deco

    def _add(self, key: str, obj: T) -> None:
        existing = self._items.get(key)
        if existing is not None and existing is not obj:
            raise RegistryError(
                f"duplicate {self.kind} name '{key}': already registered by "
                f"{_qualname(existing)}; choose another name for {_qualname(obj)}"
            )
        if hasattr(obj, "name") and isinstance(obj, type):
            obj.name = key  # type: ignore[attr-defined]
        self._items[key] = obj

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self._builtin_modules:
            for name in discover(mod):
                importlib.import_module(name)
        load_plugin_files()
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                obj = ep.load()
                if ep.name not in self._items:
                    self._add(ep.name, obj)
            except Exception as exc:  # noqa: BLE001 - a third-party plugin may fail any way
                reason = f"{type(exc).__name__}: {exc}"
                self.broken[ep.name] = reason
                log.warning(
                    "%s plugin '%s' (entry point %s) failed to load and is skipped: %s",
                    self.kind, ep.name, ep.value, reason,
                )

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(unknown_choice_message(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        for k in sorted(self._items):
            yield k, self._items[k]

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items


PLUGINS_ENV = "MI_BENCH_PLUGINS"
_plugin_files: dict[str, str | None] = {}  # resolved path -> None (loaded) or why it failed


def load_plugin_files() -> dict[str, str]:
    """Import each plugin file named in ``MI_BENCH_PLUGINS`` once per process (a file may
    register attacks and defenses alike); returns ``{path: reason}`` of those that failed, each
    also logged as a warning naming the file. Sweep workers inherit the variable."""
    import importlib.util
    import os
    import sys
    from pathlib import Path

    for entry in filter(None, os.environ.get(PLUGINS_ENV, "").split(os.pathsep)):
        root = Path(entry).expanduser()
        files = sorted(root.glob("*.py")) if root.is_dir() else [root]
        for path in files:
            key = str(path.resolve())
            if key in _plugin_files:
                continue
            _plugin_files[key] = None
            try:
                if not path.is_file() or path.suffix != ".py":
                    raise FileNotFoundError(f"no Python file at {path} (check {PLUGINS_ENV})")
                name = "mi_bench_plugin_" + "".join(c if c.isalnum() else "_" for c in path.stem)
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            except Exception as exc:  # noqa: BLE001 - a user's plugin file may fail any way
                _plugin_files[key] = f"{type(exc).__name__}: {exc}"
                log.warning("plugin file %s (%s) failed to load and is skipped: %s", path, PLUGINS_ENV,
                            _plugin_files[key])
    return {k: v for k, v in _plugin_files.items() if v is not None}


def discover(module: str) -> list[str]:
    """``module`` and, when it is a package, each of its modules not starting with ``_``
    (sorted by name): the modules to import so that their plugins register."""
    import pkgutil

    mod = importlib.import_module(module)
    if not hasattr(mod, "__path__"):
        return [module]
    return [module] + sorted(f"{module}.{m.name}" for m in pkgutil.iter_modules(mod.__path__)
                             if not m.name.startswith("_"))


def unknown_choice_message(what: str, value: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(value, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown {what} '{value}'.{hint} Valid: {', '.join(valid)}"


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


ATTACKS: Registry = Registry("attack", ("mi_bench.attacks",))
DEFENSES: Registry = Registry("defense", ("mi_bench.defenses",))
DATASETS: Registry = Registry("dataset", ("mi_bench.data", "mi_bench.faces"))
MODELS: Registry = Registry("model", ("mi_bench.models", "mi_bench.face_models"))

LAUNCHERS: Registry = Registry("launcher", ("mi_bench.sweep.launchers",))

REGISTRIES = {"attack": ATTACKS, "defense": DEFENSES, "dataset": DATASETS, "model": MODELS}
