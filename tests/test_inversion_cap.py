"""``attack.max_latents``: a cap on the inversion (mi_bench/inversion_cap.py)."""

from __future__ import annotations

import hashlib

import pytest
from rich.console import Console

from mi_bench.config import compose, config_hash, to_dict
from mi_bench.errors import ConfigError
from mi_bench.inversion_cap import cap_classes, rank
from mi_bench.tables import run_table

# config hashes (config_hash, group_hash) of default configs, computed before the field existed:
# the default (no cap) must leave every existing run's hash, and so its record's identity, as it was
PINNED = {
    ("gmi", "smoke"): ("bd5e4f0e8d84276f", "f6392123e3c56cc1"),
    ("gmi", "quick"): ("8158ffc52f98542c", "48ad937879583dfc"),
    ("kedmi", "smoke"): ("8aef3214949bbbfc", "cad5ffc55d117409"),
    ("kedmi", "quick"): ("b7a42c8f254f67f4", "3f3e58108d7d9daf"),
    ("plgmi", "smoke"): ("4c7063513a258af0", "7f7689d28229e997"),
    ("plgmi", "quick"): ("ee67b30eb742ee3b", "738ab522add50b03"),
    ("random", "smoke"): ("ec45a649fbef456c", "691304b29f593c7e"),
    ("random", "quick"): ("1f8c017071f1a377", "c951b9acddc1f7e2"),
    ("pixel", "smoke"): ("d5cddf138885e46d", "6bd559308d35de99"),
    ("pixel", "quick"): ("246a1b59bb3b0d9b", "cb3f92530b62068d"),
}


@pytest.mark.parametrize("attack,preset", sorted(PINNED))
def test_default_config_hash_is_unchanged(attack, preset):
    cfg = compose([f"attack={attack}", f"preset={preset}"])
    assert cfg.attack.max_latents == 0
    d = to_dict(cfg)
    assert (config_hash(d), config_hash(d, drop=("seed",))) == PINNED[(attack, preset)]
    capped = to_dict(compose([f"attack={attack}", f"preset={preset}", "attack.max_latents=40"]))
    assert config_hash(capped) != config_hash(d)  # a capped run is another run


def test_the_cap_enters_no_artifact_key():
    from mi_bench.data import load_splits, resolve_data_root
    from mi_bench.stages import artifact_plan

    cfg = compose(["preset=smoke", "attack=gmi"])
    splits = load_splits(cfg.dataset, resolve_data_root(cfg.data_root))
    capped = compose(["preset=smoke", "attack=gmi", "attack.max_latents=4"])
    assert artifact_plan(capped, splits) == artifact_plan(cfg, splits)  # nothing retrained


def test_the_rule_is_the_documented_hash_order():
    cfg = compose(["preset=smoke", "attack=gmi", "attack.restarts=2", "attack.max_latents=13"])  # 4 per class
    classes, cap = cap_classes(list(range(10)), cfg.attack, seed=7)
    expected = sorted(sorted(range(10), key=lambda c: hashlib.sha256(f"7:{c}".encode()).hexdigest())[:3])
    assert classes == expected == cap["attacked"]
    assert cap["left_out"] == sorted(set(range(10)) - set(expected))
    assert cap["latents_per_class"] == 4 and cap["latents"] == 12 and cap["binding"]
    assert rank(list(range(10)), 7)[:3] == sorted(expected, key=lambda c: rank(list(range(10)), 7).index(c))
    # reproducible, nested in the cap, seed-dependent
    assert cap_classes(list(range(10)), cfg.attack, seed=7)[0] == classes
    bigger = compose(["preset=smoke", "attack=gmi", "attack.restarts=2", "attack.max_latents=24"])
    assert set(classes) <= set(cap_classes(list(range(10)), bigger.attack, seed=7)[0])
    draws = {tuple(cap_classes(list(range(10)), cfg.attack, seed=s)[0]) for s in range(8)}
    assert len(draws) > 1
    # no cap: every class, no statement
    assert cap_classes([0, 1, 2], compose(["preset=smoke"]).attack, seed=0) == ([0, 1, 2], None)
    # a cap that is never reached is stated as such
    loose, st = cap_classes([0, 1], cfg.attack, seed=0)
    assert loose == [0, 1] and st["left_out"] == [] and not st["binding"]


def test_a_cap_below_one_class_is_refused():
    cfg = compose(["preset=smoke", "attack=gmi", "attack.restarts=3", "attack.max_latents=5"])  # 6 per class
    with pytest.raises(ConfigError, match="attack.max_latents=5 is below the 6 latents of one class"):
        cap_classes([0, 1], cfg.attack, seed=0)


def _table_text(rec) -> str:
    c = Console(width=400, record=True)
    c.print(run_table(rec))
    return c.export_text()


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_capped_smoke_run_attacks_exactly_the_stated_classes(tmp_path):
    from mi_bench.pipeline import run
    from mi_bench.runs import load_reconstructions

    def once():
        cfg = compose(["preset=smoke", "attack=gmi", "attack.max_latents=5", "seed=3",  # 2 latents per class
                       f"cache_dir={tmp_path / 'cache'}", f"results_db={tmp_path / 'r.sqlite'}",
                       f"results_dir={tmp_path / 'runs'}"])
        return run(cfg)

    rec = once()
    cap = rec["protocol"]["inversion"]["cap"]
    expected, _ = cap_classes(list(range(5)), compose(["preset=smoke", "attack.max_latents=5"]).attack, seed=3)
    assert len(expected) == 2
    assert cap["attacked"] == expected == rec["protocol"]["attacked_classes"]
    assert cap["left_out"] == sorted(set(range(5)) - set(expected))
    assert cap["max_latents"] == 5 and cap["seed"] == 3 and "sha256" in cap["rule"]
    images, classes = load_reconstructions(rec["run_dir"])
    assert classes == expected and images.shape[:2] == (2, 2)
    assert sorted(int(k) for k in rec["metrics"]["per_class"]) == expected
    assert rec["metrics"]["n_reconstructions"] == 4
    text = _table_text(rec)
    assert "inversion cap" in text and "2 of 5 classes" in text
    assert f"left out (not attacked): {cap['left_out']}" in text and "attack.max_latents=5" in text

    again = once()  # the same seed: the same classes (the artifacts come from the cache)
    assert again["trained"] == []
    assert again["protocol"]["inversion"]["cap"]["attacked"] == expected
    assert again["protocol"]["attacked_classes"] == expected


def test_an_uncapped_run_states_no_cap(smoke_run):
    assert "cap" not in smoke_run["protocol"]["inversion"]
    assert "inversion cap" not in _table_text(smoke_run)


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_a_time_budget_inverts_what_fits_and_says_so(tmp_path):
    from mi_bench.pipeline import run
    from mi_bench.runs import load_reconstructions

    def once(budget):
        cfg = compose(["preset=smoke", "attack=gmi", f"attack.time_budget_s={budget}", "seed=5",
                       f"cache_dir={tmp_path / 'cache'}", f"results_db={tmp_path / 'r.sqlite'}",
                       f"results_dir={tmp_path / 'runs'}"])
        return run(cfg)

    tight = once(1e-6)  # not even one class fits: one is attacked, the first in the seed's order
    cap = tight["protocol"]["inversion"]["cap"]
    assert cap["attacked"] == [rank(list(range(5)), 5)[0]] == tight["protocol"]["attacked_classes"]
    assert cap["left_out"] == sorted(set(range(5)) - set(cap["attacked"])) and cap["binding"]
    assert cap["time_budget_s"] == 1e-6 and cap["max_latents"] == 0
    est = cap["time_estimate"]
    assert est["classes"] == 5 and est["estimate_s"] > 0 and not est["fits_in_budget"]
    assert not est["fits_one_class"]
    assert load_reconstructions(tight["run_dir"])[1] == cap["attacked"]
    text = _table_text(tight)
    assert "1 of 5 classes" in text and "attack.time_budget_s=1e-06" in text and "not even one class fits" in text

    loose = once(1e6)  # everything fits: every class, and the record says the budget was not reached
    cap = loose["protocol"]["inversion"]["cap"]
    assert loose["trained"] == [] and cap["attacked"] == list(range(5)) and cap["left_out"] == []
    assert cap["time_estimate"]["fits_in_budget"] and not cap["binding"]
    assert "not reached" in _table_text(loose)
