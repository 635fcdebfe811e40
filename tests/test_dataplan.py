"""``mi-bench data`` (mi_bench/dataplan.py): the protocol a config would produce, before training."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mi_bench.config import compose
from mi_bench.data import load_splits, resolve_data_root
from mi_bench.dataplan import plan, render

from test_cli import invoke  # the same CLI call




def _stats(y: torch.Tensor, labels: list[int]) -> tuple[int, float, int]:
    per = [int((y == c).sum()) for c in labels]
    return min(per), statistics.median(per), max(per)


def test_counts_match_the_splits_of_the_digits_dataset(env):
    cfg = compose(["preset=smoke", "dataset=digits"])
    p = plan(cfg, measure=False)
    splits = load_splits(cfg.dataset, resolve_data_root(cfg.data_root))
    assert p["private_identities"] == splits.num_private_classes == 5
    assert p["public_identities"] == len(torch.unique(splits.public[1])) == 10  # disjoint_samples
    assert p["image_shape"] == list(splits.image_shape) == [1, 32, 32]
    assert p["domain_classes"] == 10
    for split, n in splits.counts().items():
        c = p["counts"][split]
        y = getattr(splits, split)[1]
        labels = list(range(5)) if split.startswith("private") else sorted(set(y.tolist()))
        assert c["images"] == n, split
        assert (c["min"], c["median"], c["max"]) == _stats(y, labels), split
        assert c["identities"] == len(labels)
    assert p["stages"] is None and p["estimate_total_s"] is None


@pytest.mark.parametrize("tokens,classes,per_class,samples", [
    (["attack=gmi"], 5, 2 * 1, 2),  # smoke: 2 samples x 1 restart
    (["attack=gmi", "attack.restarts=3", "attack.samples_per_class=4"], 5, 12, 4),
    (["attack=gmi", "classes=[0,3]"], 2, 2, 2),
    (["attack=kedmi", "attack.samples_per_class=3"], 5, 3, 3),
    (["attack=gmi", "attack.restarts=2", "attack.max_latents=9"], 2, 4, 2),  # 9 // 4 = 2 classes
])
def test_reconstruction_count_matches_the_attack_config(env, tokens, classes, per_class, samples):
    cfg = compose(["preset=smoke", "dataset=digits", *tokens])
    inv = plan(cfg, measure=False)["inversion"]
    assert inv["classes_attacked"] == classes
    assert inv["latents_per_class"] == per_class
    assert inv["latents"] == classes * per_class
    assert inv["reconstructions"] == classes * samples == classes * cfg.attack.samples_per_class
    assert len(inv["attacked"]) == classes
    if cfg.attack.max_latents:
        assert inv["cap"]["left_out"] == inv["left_out"] and len(inv["left_out"]) == 5 - classes


def test_cli_prints_the_protocol_and_timed_estimates(env):
    r = invoke("data", "preset=smoke", "dataset=digits", "attack=gmi")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "private identities: 5; public identities: 10" in out
    assert "1 channel x 32 x 32" in out
    assert "5 of 5 classes x 2 samples x 1 restarts = 10 latents, 10 reconstructions kept" in out
    for stage in ("target", "evaluator", "judge-resnet", "judge-robust", "prior", "inversion", "total"):
        assert f"  {stage} " in out, stage
    p = json.loads(invoke("data", "preset=smoke", "dataset=digits", "--json").stdout)
    stages = {s["stage"]: s for s in p["stages"]}
    for name in ("target", "evaluator", "judge-resnet", "judge-robust", "prior", "inversion"):
        s = stages[name]
        assert s["estimate_s"] is not None and s["estimate_s"] > 0 and not s["cached"], name
    # the estimate multiplies a measured step by the configured steps (smoke target: 2 epochs)
    assert stages["target"]["steps"].startswith("2 epochs x ")
    assert stages["prior"]["steps"] == "3 steps" and stages["inversion"]["steps"] == "3 iterations"
    assert p["estimate_total_s"] == pytest.approx(sum(s["estimate_s"] for s in p["stages"]))
    assert not (env / "results").exists()  # nothing trained, nothing stored


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_cached_stages_cost_nothing(env):
    from mi_bench.pipeline import run

    cfg = compose(["preset=smoke", "dataset=digits", f"cache_dir={env / 'c2'}", f"results_db={env / 'r.sqlite'}",
                   f"results_dir={env / 'runs'}"])
    run(cfg)
    p = plan(cfg)
    stages = {s["stage"]: s for s in p["stages"]}
    for name in ("target", "evaluator", "judge-resnet", "judge-robust", "prior"):
        assert stages[name]["cached"] and stages[name]["estimate_s"] == 0.0, name
    assert stages["inversion"]["estimate_s"] > 0


def test_few_training_images_per_person_warns_with_the_fix(env):
    cfg = compose(["preset=smoke", "dataset=digits", "dataset.max_train_per_class=20"])
    p = plan(cfg, measure=False)
    warn = [w for w in p["warnings"] if "training images per person" in w]
    assert len(warn) == 1 and "expect low accuracy from scratch" in warn[0]
    assert "target.pretrain=public" in warn[0]
    assert "warning: " + warn[0] in render(p)


def test_the_protocol_is_shown_before_any_step_is_timed(env, monkeypatch):
    """The data part comes first (seconds), the timed estimate after; no warning twice."""
    from mi_bench import dataplan

    events: list = []
    real = dataplan._timed_stages
    monkeypatch.setattr(dataplan, "_timed_stages", lambda *a, **k: (events.append("timing"), real(*a, **k))[1])
    toks = ["preset=smoke", "dataset=digits", "dataset.max_train_per_class=20"]
    p = plan(compose(toks), on_protocol=lambda head: events.append(("protocol", head)))
    assert [e if isinstance(e, str) else e[0] for e in events] == ["protocol", "timing"]
    head = events[0][1]
    assert head["stages"] is None and head["counts"] == p["counts"] and head["inversion"] == p["inversion"]
    assert head["warnings"] and p["warnings"][:len(head["warnings"])] == head["warnings"]
    r = invoke("data", *toks)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert out.index("private identities") < out.index("images per identity") < \
        out.index("estimated time on this machine") < out.index("  total ")
    for w in p["warnings"]:
        assert out.count("warning: " + w) == 1, w
    assert "timing a few steps" in r.stderr
    quiet = invoke("data", *toks, "--no-timing")
    assert "estimated time" not in quiet.stdout and "timing a few steps" not in quiet.stderr
    assert all(quiet.stdout.count("warning: " + w) == 1 for w in head["warnings"])


def _tree(root: Path, counts: dict[str, int]) -> None:
    for i, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            a = np.full((24, 24, 3), (30 * i + 7 * j) % 256, np.uint8)
            Image.fromarray(a).save(root / name / f"{j + 1}.png")


def _one_error_line(r) -> str:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()  # log lines (decoding progress) may come before it
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    assert not any("Traceback" in line for line in lines)
    return errors[0]


def test_missing_folder_exits_2_with_one_line(env):
    err = _one_error_line(invoke("data", "dataset=folder", "preset=smoke", f"dataset.face.path={env / 'nowhere'}"))
    assert "is not a folder" in err and "nowhere" in err
    err = _one_error_line(invoke("data", "dataset=folder", "preset=smoke"))
    assert "dataset.face.path" in err


def test_folder_with_too_few_images_per_identity_exits_2(env):
    _tree(env / "people", {"a": 3, "b": 4, "c": 2})
    err = _one_error_line(invoke("data", "dataset=folder", "preset=smoke", f"dataset.face.path={env / 'people'}",
                                 "--no-timing"))
    assert "identities have at least" in err and "dataset.face.min_images" in err


def test_folder_with_an_unreadable_image_exits_2(env):
    _tree(env / "people", {"a": 6, "b": 6, "c": 6})
    (env / "people" / "b" / "7.png").write_bytes(b"not a png")
    err = _one_error_line(invoke("data", "dataset=folder", "preset=smoke", f"dataset.face.path={env / 'people'}",
                                 "dataset.face.min_images=5", "dataset.private_classes=2", "--no-timing"))
    assert "cannot read image" in err and "7.png" in err


def test_folder_plan_counts_identities(env):
    _tree(env / "people", {"p1": 8, "p2": 9, "p3": 10, "p4": 3, "p5": 2})
    r = invoke("data", "dataset=folder", "preset=smoke", f"dataset.face.path={env / 'people'}",
               "dataset.face.min_images=8",
               "dataset.private_classes=3", "dataset.face.public_size=0", "--json", "--no-timing")
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)
    assert p["private_identities"] == 3 and p["public_identities"] == 2
    assert p["counts"]["public"]["images"] == 5
    priv = sum(p["counts"][s]["images"] for s in ("private_train", "private_val", "private_test"))
    assert priv == 8 + 9 + 10


def test_an_inversion_that_dominates_the_estimate_suggests_a_cap(env):
    from mi_bench.dataplan import data_warnings

    cfg = compose(["preset=quick", "dataset=digits"])
    p = plan(cfg, measure=False)
    stages = [{"stage": "target", "estimate_s": 100.0}, {"stage": "prior", "estimate_s": 250.0},
              {"stage": "inversion", "estimate_s": 642.0}]
    warn = [w for w in data_warnings(cfg, p["counts"], stages, p["inversion"]) if "inversion is" in w]
    assert len(warn) == 1 and "65% of the estimated time (200 latents)" in warn[0]
    assert "attack.max_latents=80" in warn[0]  # 2 of 5 classes at 40 latents each
    small = [{"stage": "target", "estimate_s": 100.0}, {"stage": "inversion", "estimate_s": 50.0}]
    assert not [w for w in data_warnings(cfg, p["counts"], small, p["inversion"]) if "inversion is" in w]


def test_a_time_budget_is_shown_against_the_estimate(env):
    p = json.loads(invoke("data", "preset=smoke", "dataset=digits", "attack.time_budget_s=1e-6", "--json").stdout)
    tb = p["inversion"]["time_budget"]
    assert tb["budget_s"] == 1e-6 and tb["classes_fitting"] == 1 and tb["estimate_s"] > 0
    assert "time budget: attack.time_budget_s=1e-06" in render(p)


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_timings_are_kept_reused_updated_for_trained_stages_and_remeasured_on_request(env, monkeypatch):
    import mi_bench.dataplan as dp
    from mi_bench.pipeline import run

    cfg = compose(["preset=smoke", "dataset=digits", f"cache_dir={env / 'c3'}", f"results_db={env / 'r.sqlite'}",
                   f"results_dir={env / 'runs'}"])
    first = plan(cfg)
    assert first["timings_from"] is None and first["stages"][0]["estimate_s"] > 0
    calls = []
    real = dp.estimate_stages
    monkeypatch.setattr(dp, "estimate_stages", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = plan(cfg)
    assert not calls and again["timings_from"] and again["stages"] == first["stages"]  # no step timed
    run(cfg)  # trains every stage: the kept timings now say they are cached
    after = {s["stage"]: s for s in plan(cfg)["stages"]}
    assert not calls and after["target"]["cached"] and after["target"]["estimate_s"] == 0.0
    assert after["inversion"]["estimate_s"] > 0
    fresh = plan(cfg, remeasure=True)
    assert calls == [1] and fresh["timings_from"] is None
