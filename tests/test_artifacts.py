"""Checkpoints never execute code; corrupt or half-written artifacts are refused clearly."""

import json
import os
import pickle

import pytest
import torch
from click.testing import CliRunner

from mi_bench.artifacts import ArtifactError, ArtifactStore, load_checkpoint

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
    with pytest.raises(ArtifactError, match="corrupt .*checksum mismatch.*delete"):
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


def test_cli_reports_corrupt_cache_with_exit_2(tmp_path, monkeypatch):
    from mi_bench.cli import cli

    monkeypatch.setenv("MI_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["run", "preset=smoke", "--quiet", "--json"])
    assert r.exit_code == 0
    key = json.loads(r.stdout)["artifacts"]["target"]["key"]
    f = tmp_path / "cache" / "target" / key / "tensors.safetensors"
    f.write_bytes(f.read_bytes()[:-8] + b"garbage!")
    r = CliRunner().invoke(cli, ["run", "preset=smoke", "--quiet"])
    assert r.exit_code == 2 and "is corrupt" in r.stderr and key in r.stderr
