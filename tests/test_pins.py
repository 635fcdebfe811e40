"""Cache keys are a promise to every user's cache: the config hash, the leaderboard group hash,
the defense label and each artifact's key of fixed configs are pinned (tests/pins.json).

A refactor must leave them all unchanged; a change that means to retrain (a new semantic field
without ``neutral_default``, a changed recipe) updates tests/pins.json in the same commit and
says why. Regenerate: ``python tests/test_pins.py > tests/pins.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

PINS = Path(__file__).with_name("pins.json")

CONFIGS = [
    (), ("preset=smoke",), ("defense=bido",), ("defense=bido", "defense.measure=coco"),
    ("defense=mid", "attack=kedmi"), ("defense=dpsgd", "attack=plgmi"), ("defense=qad",),
    ("defense=desmil", "attack=random"), ("attack=pixel",), ("dataset=mnist", "preset=quick"),
    ("dataset=lfw", "preset=cpu", "attack=kedmi"),
    ("dataset=mnist", "preset=quick", "attack=gmi", "defense=bido", "seed=2"),
    ("defense=ls",), ("defense=trapmid",), ("defense=advtrain",), ("defense=tldmi",),
    ("attack=gmi", "attack.lomma=true"),
]
NEEDS_DATA = ("dataset=mnist", "dataset=lfw")  # their artifact keys need the dataset: hashes only


def pins_of(toks: tuple[str, ...]) -> dict:
    from mi_bench.config import compose, config_hash, to_dict
    from mi_bench.pipeline import Runner
    from mi_bench.record import defense_label
    from mi_bench.stages import artifact_plan

    cfg = compose(list(toks))
    d = to_dict(cfg)
    entry = {"config_hash": config_hash(d), "group_hash": config_hash(d, drop=("seed",)),
             "defense_label": defense_label(cfg.defense)}
    if not any(t in toks for t in NEEDS_DATA):
        splits = Runner(cfg).load_splits()[0]
        entry["artifacts"] = {k: list(v) for k, v in artifact_plan(cfg, splits).items()}
    return entry


def _name(toks: tuple[str, ...]) -> str:
    return " ".join(toks) or "(default)"


@pytest.mark.parametrize("toks", CONFIGS, ids=[_name(t) for t in CONFIGS])
def test_hashes_labels_and_artifact_keys_are_unchanged(toks, tmp_path, monkeypatch):
    monkeypatch.setenv("MI_BENCH_CACHE", str(tmp_path / "cache"))
    pinned = json.loads(PINS.read_text())
    assert _name(toks) in pinned, f"no pin for {_name(toks)}: python tests/test_pins.py > tests/pins.json"
    assert pins_of(toks) == pinned[_name(toks)]


def test_pins_tell_configs_apart():
    # a pin file where every config had one hash would pass the test above for a constant hash
    pinned = json.loads(PINS.read_text())
    assert len({p["config_hash"] for p in pinned.values()}) == len(pinned)
    assert len({p["artifacts"]["target"][1] for p in pinned.values() if "artifacts" in p}) > 5


if __name__ == "__main__":
    import os
    import tempfile

    os.environ.setdefault("MI_BENCH_CACHE", tempfile.mkdtemp())
    json.dump({_name(t): pins_of(t) for t in CONFIGS}, sys.stdout, indent=1, sort_keys=True)
    print()
