"""Checkpoints never execute code; corrupt or half-written artifacts are refused clearly."""

import json
import os
import pickle

import pytest
import torch
from click.testing import CliRunner

from mi_bench.artifacts import ArtifactStore, load_checkpoint
from mi_bench.errors import ArtifactError

MARKER = "/tmp/mi_bench_pwned_marker"


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _evil_file(path):
    with open(path, "wb") as f:
        pickle.dump({"weight": Evil()}, f)
    return path


def test_crafted_pickle_checkpoint_is_refused_and_never_runs(tmp_path):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    path = _evil_file(tmp_path / "evil.pt")
    with pytest.raises(ArtifactError, match="refusing to load .*never unpickles code"):
        load_checkpoint(path)
    assert not os.path.exists(MARKER)


def test_pickle_disguised_as_safetensors_is_refused(tmp_path):
    path = _evil_file(tmp_path / "evil.safetensors")
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        load_checkpoint(path)
    assert not os.path.exists(MARKER)


def test_plain_state_dict_checkpoint_loads(tmp_path):
    sd = {"w": torch.randn(3, 2)}
    torch.save(sd, tmp_path / "ok.pt")
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt")["w"], sd["w"])


def test_cli_refuses_malicious_target_checkpoint_with_exit_2(tmp_path, monkeypatch):
    from mi_bench.cli import cli

    monkeypatch.setenv("MI_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    path = _evil_file(tmp_path / "evil.pt")
    r = CliRunner().invoke(cli, ["run", "preset=smoke", f"target_checkpoint={path}", "--quiet"])
    assert r.exit_code == 2
    assert "refusing to load" in r.stderr
    assert not os.path.exists(MARKER)
    assert not (tmp_path / "results").exists()


def test_store_roundtrip_checksum_and_corruption(tmp_path):
    from mi_bench.errors import ArtifactCorrupt

    store = ArtifactStore(tmp_path)
    t = {"a": torch.arange(6.0).view(2, 3)}
    digest = store.save("target", "k1", t, {"note": "x"})
    assert store.exists("target", "k1")
    loaded, meta = store.load("target", "k1")
    assert torch.equal(loaded["a"], t["a"]) and meta["sha256"] == digest
    assert not [p for p in (tmp_path / "target" / "k1").iterdir() if p.name.endswith(".tmp")]

    f = tmp_path / "target" / "k1" / "tensors.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupt, match="corrupt .*checksum mismatch"):
        store.load("target", "k1")


def test_half_written_artifact_is_not_seen(tmp_path):
    """meta.json is written last: an artifact without it counts as absent (it is rebuilt)."""
    store = ArtifactStore(tmp_path)
    store.save("prior-gmi", "k", {"a": torch.ones(2)}, {})
    (tmp_path / "prior-gmi" / "k" / "meta.json").unlink()
    assert not store.exists("prior-gmi", "k")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import mi_bench.artifacts as art

    def boom(tensors, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(art, "save_file", boom)
    with pytest.raises(OSError):
        ArtifactStore(tmp_path).save("target", "k", {"a": torch.ones(1)}, {})
    d = tmp_path / "target" / "k"
    assert not d.exists() or not any(d.iterdir())


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_cli_rebuilds_a_corrupt_cached_artifact_with_a_warning(tmp_path, monkeypatch):
    from mi_bench.cli import cli

    monkeypatch.setenv("MI_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["run", "preset=smoke", "--quiet", "--json"])
    assert r.exit_code == 0
    first = json.loads(r.stdout)
    key = first["artifacts"]["target"]["key"]
    f = tmp_path / "cache" / "target" / key / "tensors.safetensors"
    f.write_bytes(f.read_bytes()[:-8] + b"garbage!")
    r = CliRunner().invoke(cli, ["run", "preset=smoke", "--quiet", "--json"])
    assert r.exit_code == 0
    rec = json.loads(r.stdout)
    assert rec["trained"] == ["target"]  # rebuilt; evaluator and prior still cached
    assert rec["artifacts"]["target"]["sha256"] == first["artifacts"]["target"]["sha256"]  # deterministic
    assert "is corrupt" in r.stderr and "moved it aside" in r.stderr
    assert len(list((tmp_path / "cache" / "target").glob(f"{key}.corrupt-*"))) == 1


def test_truncated_user_checkpoint_is_refused_not_rebuilt(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from mi_bench.cli import cli

    monkeypatch.setenv("MI_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "mine.safetensors"
    save_file({"w": torch.ones(100)}, str(path))
    path.write_bytes(path.read_bytes()[:-40])
    r = CliRunner().invoke(cli, ["run", "preset=smoke", f"target_checkpoint={path}", "--quiet"])
    assert r.exit_code == 2 and "is not a valid safetensors file" in r.stderr
    assert path.stat().st_size > 0 and not (tmp_path / "cache" / "target").exists()
