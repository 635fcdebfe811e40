"""The cells of a sweep: the cartesian product of comma-separated override values, each composed
and validated before any work, and the artifacts each cell would train.

``defense=none,bido attack=gmi,kedmi seed=0,1,2`` is 12 cells. A value ``@sweep`` stands for the
field's documented range (``param(..., sweep=(...))``): ``defense=bido defense.lambda_y=@sweep``
runs BiDO at each strength its plugin documents. Each cell is identified by its config hash (what
it computes; threads, device and paths left out). When no ``seed=`` is given the sweep runs seeds
0, 1 and 2: a comparison with a matched baseline needs at least three. ``seeds=N`` runs seeds
0..N-1 (``results/bench/power.md`` says how many a 10- or 20-point change needs); it and ``seed=``
together are refused.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from mi_bench.config import RunConfig, compose, config_hash, stable_hash, to_dict
from mi_bench.errors import ConfigError

log = logging.getLogger(__name__)



DEFAULT_SEEDS = "0,1,2"


SHARED_PATHS = ("results_db", "results_dir", "cache_dir", "data_root")


@dataclass
class Cell:
    tokens: list[str]
    cfg: RunConfig
    hash: str

    @property
    def label(self) -> str:
        """The cell's overrides, without those that only say where or how fast it runs."""
        from mi_bench.config import NON_SEMANTIC

        return " ".join(t for t in self.tokens if t.split("=", 1)[0] not in NON_SEMANTIC)


def _expand(token: str) -> list[str]:
    key, _, value = token.partition("=")
    if not value or value.startswith("[") or "," not in value:
        return [token]
    return [f"{key}={v}" for v in value.split(",")]


SWEEP_RANGE = "@sweep"  # a value standing for the field's documented range (param(sweep=...))


def documented_ranges(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with each ``key=@sweep`` replaced by ``key=v1,v2,...``, the documented range
    of that field (``param(..., sweep=(...))``) in the config the other overrides select (their
    first values). ConfigError when the field documents no range."""
    import dataclasses

    wanted = [t for t in overrides if t.partition("=")[2] == SWEEP_RANGE]
    if not wanted:
        return list(overrides)
    base = [t.split(",")[0] if "=" in t and not t.partition("=")[2].startswith("[") else t
            for t in overrides if t not in wanted]
    cfg = compose(base)
    out = []
    for t in overrides:
        if t not in wanted:
            out.append(t)
            continue
        key = t.partition("=")[0]
        *path, name = key.split(".")
        section: Any = cfg
        for part in path:
            section = getattr(section, part, None)
        fields = {f.name: f for f in dataclasses.fields(section)} if dataclasses.is_dataclass(section) else {}
        if name not in fields:
            raise ConfigError(f"{key}={SWEEP_RANGE}: '{key}' is not a config field of this sweep's "
                              "config; see 'mi-bench show-config'")
        values = fields[name].metadata.get("sweep")
        if not values:
            raise ConfigError(f"{key}={SWEEP_RANGE}: '{key}' documents no range (param(..., sweep=...)); "
                              f"give the values instead, e.g. {key}=0.1,1")
        out.append(f"{key}={','.join(map(str, values))}")
    return out


SEED_COUNT = "seeds"  # seeds=N: target seeds 0..N-1 (a sweep option, not a config field)


def seed_count(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with ``seeds=N`` replaced by ``seed=0,1,...,N-1``. ConfigError when N is
    not a positive integer, when ``seeds=`` is given twice, or together with ``seed=``."""
    counts = [t for t in overrides if t.partition("=")[0] == SEED_COUNT]
    if not counts:
        return list(overrides)
    if len(counts) > 1:
        raise ConfigError(f"{' and '.join(counts)}: give seeds=N once")
    if any(t.partition("=")[0] == "seed" for t in overrides):
        given = next(t for t in overrides if t.partition("=")[0] == "seed")
        raise ConfigError(f"{counts[0]} and {given} both choose the seeds: give seeds=N (seeds 0..N-1) "
                          "or seed=a,b,c, not both")
    value = counts[0].partition("=")[2]
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{counts[0]}: seeds=N takes a positive number of target seeds, e.g. seeds=5")
    return [f"seed={','.join(map(str, range(int(value))))}" if t == counts[0] else t for t in overrides]


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """The cartesian product of comma-separated values (``key=@sweep``: the field's documented
    range, :func:`documented_ranges`; ``seeds=N``: seeds 0..N-1, :func:`seed_count`);
    ``seed=0,1,2`` when no seed is given."""
    tokens = documented_ranges(seed_count(overrides))
    if not any(t.partition("=")[0] == "seed" for t in tokens):
        tokens.append(f"seed={DEFAULT_SEEDS}")
    return [list(c) for c in itertools.product(*[_expand(t) for t in tokens])]


def make_cells(overrides: Sequence[str]) -> list[Cell]:
    """Compose and validate every cell before any work (ConfigError on the first bad one)."""
    cells: list[Cell] = []
    seen: dict[str, Cell] = {}
    for tokens in expand(overrides):
        cfg = compose(tokens)
        h = config_hash(to_dict(cfg))
        if h in seen:
            log.warning("cells '%s' and '%s' compute the same thing (they differ only in threads, "
                        "device or paths): running it once", seen[h].label, " ".join(tokens))
            continue
        cell = Cell(tokens, cfg, h)
        seen[h] = cell
        cells.append(cell)
    for key in SHARED_PATHS:
        values = {getattr(c.cfg, key) for c in cells}
        if len(values) > 1:
            raise ConfigError(f"{key} differs between cells ({', '.join(sorted(map(str, values)))}): "
                              "one sweep writes to one place; run a sweep per value")
    return cells


def plan_cells(cells: list[Cell]) -> dict[str, dict[str, tuple[str, str]]]:
    """``{cell hash: {stage: (kind, key)}}`` without training (datasets are loaded once each)."""
    from mi_bench.artifacts import resolve_cache_dir
    from mi_bench.data import load_splits, resolve_data_root
    from mi_bench.stages import artifact_plan

    splits_cache: dict[str, Any] = {}
    plans = {}
    for c in cells:
        dkey = stable_hash([to_dict(c.cfg.dataset), c.cfg.data_root])
        if dkey not in splits_cache:
            splits_cache[dkey] = load_splits(c.cfg.dataset, resolve_data_root(c.cfg.data_root),
                                             cache_dir=resolve_cache_dir(c.cfg.cache_dir))
        plans[c.hash] = artifact_plan(c.cfg, splits_cache[dkey])
    return plans


def cached_artifacts(cells: list[Cell], plans: dict[str, dict[str, tuple[str, str]]]) -> set[tuple[str, str]]:
    from mi_bench.artifacts import ArtifactStore, resolve_cache_dir

    store = ArtifactStore(resolve_cache_dir(cells[0].cfg.cache_dir))
    return {a for p in plans.values() for a in p.values() if store.exists(*a)}


def order_cells(cells: list[Cell], needs: dict[str, set]) -> list[Cell]:
    """One cell per artifact that several cells need (not cached yet) first, then the rest;
    otherwise the grid's order."""
    count = Counter(a for c in cells for a in needs.get(c.hash, ()))
    shared = {a for a, n in count.items() if n > 1}
    covered: set = set()
    first, rest = [], []
    for c in cells:
        new = (needs.get(c.hash, set()) & shared) - covered
        if new:
            first.append(c)
            covered |= new
        else:
            rest.append(c)
    return first + rest


def pick_next(pending: list[Cell], needs: dict[str, set], building: set) -> Cell:
    """The first pending cell that needs the fewest artifacts other running cells are building."""
    best = min(range(len(pending)), key=lambda i: (len(needs.get(pending[i].hash, set()) & building), i))
    return pending.pop(best)
