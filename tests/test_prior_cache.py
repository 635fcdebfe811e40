"""Per-target priors (KED-MI, PLG-MI) carry the target in their key; GMI's prior is shared."""

import json

import pytest
from click.testing import CliRunner

from mi_bench.cli import cli


def _run(*args):
    r = CliRunner().invoke(cli, ["run", "preset=smoke", "--json", "--quiet", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
@pytest.mark.parametrize("attack", ["kedmi", "plgmi"])
def test_per_target_prior_is_cached_per_target(attack, tmp_path, monkeypatch):
    monkeypatch.setenv("MI_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    first = _run(f"attack={attack}")
    assert first["trained"] == ["target", "evaluator", "judge-resnet", "judge-robust", "prior"]
    assert first["artifacts"]["prior"]["shared_across_targets"] is False

    again = _run(f"attack={attack}")  # same target: no GAN training
    assert again["trained"] == []
    assert again["artifacts"]["prior"]["key"] == first["artifacts"]["prior"]["key"]

    inv_only = _run(f"attack={attack}", "attack.iterations=2", "attack.samples_per_class=3")
    assert inv_only["trained"] == []  # inversion settings never retrain the prior

    other = _run(f"attack={attack}", "defense=bido")  # a different target: a new GAN
    assert other["trained"] == ["target", "prior"]
    assert other["artifacts"]["prior"]["key"] != first["artifacts"]["prior"]["key"]


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_gmi_prior_is_shared_across_targets(tmp_path, monkeypatch):
    monkeypatch.setenv("MI_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    a = _run("attack=gmi")
    b = _run("attack=gmi", "defense=bido")
    assert b["trained"] == ["target"]
    assert a["artifacts"]["prior"]["key"] == b["artifacts"]["prior"]["key"]
    assert a["artifacts"]["prior"]["shared_across_targets"] is True
