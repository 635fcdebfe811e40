"""Data protocols: counts, disjointness, determinism."""

from pathlib import Path

import pytest
import torch

from mi_bench.data import DatasetConfig, load_splits, pk_batches
from mi_bench.errors import DataUnavailable

from conftest import shared_mnist_or_skip


def _rows(x):
    return {bytes((t * 255).round().to(torch.uint8).numpy().tobytes()) for t in x}


@pytest.mark.parametrize("protocol", ["disjoint_samples", "disjoint_classes"])
def test_digits_private_and_public_never_share_an_image(protocol):
    s = load_splits(DatasetConfig(protocol=protocol), Path("."))
    private = _rows(torch.cat([s.private_train[0], s.private_val[0], s.private_test[0]]))
    assert not private & _rows(s.public[0])
    pub_classes = set(s.public[1].tolist())
    if protocol == "disjoint_classes":
        assert pub_classes == {5, 6, 7, 8, 9}
    else:
        assert pub_classes == set(range(10))
    assert set(s.private_train[1].tolist()) == {0, 1, 2, 3, 4}
    assert set(s.eval_train[1].tolist()) == set(range(10))
    assert not _rows(s.eval_test[0]) & _rows(s.eval_train[0])
    assert s.image_shape == (1, 32, 32) and 0 <= float(s.public[0].min()) and float(s.public[0].max()) <= 1


def test_digits_split_is_deterministic_and_shared_by_both_protocols():
    a = load_splits(DatasetConfig(protocol="disjoint_samples"), Path("."))
    b = load_splits(DatasetConfig(protocol="disjoint_classes"), Path("."))
    assert torch.equal(a.private_train[0], b.private_train[0])  # same target data, only public differs
    assert a.fingerprint(("private_train",)) != b.fingerprint(("private_train",))  # protocol in the hash
    c = load_splits(DatasetConfig(protocol="disjoint_samples"), Path("."))
    assert a.fingerprint(("public",)) == c.fingerprint(("public",))
    d = load_splits(DatasetConfig(protocol="disjoint_samples", split_seed=1), Path("."))
    assert not torch.equal(a.private_train[0], d.private_train[0])


def test_pk_sampler_gives_p_classes_by_k_images():
    labels = torch.arange(200) % 10
    batches = pk_batches(labels, 4, 3, torch.Generator().manual_seed(0))
    assert len(batches) == 200 // 12
    for b in batches:
        counts = torch.bincount(labels[b], minlength=10)
        assert sorted(counts[counts > 0].tolist()) == [3, 3, 3, 3]


@pytest.mark.data
def test_mnist_bido_protocol_counts():
    root = shared_mnist_or_skip()
    s = load_splits(DatasetConfig(name="mnist", protocol="disjoint_classes"), root)
    c = s.counts()
    assert c["private_train"] + c["private_val"] == 30596
    assert c["private_test"] == 5139
    assert c["public"] == 34265
    assert set(s.public[1].tolist()) == {5, 6, 7, 8, 9}
    assert c["eval_train"] + c["eval_val"] == 60000 and c["eval_test"] == 10000
    assert s.image_shape == (1, 32, 32)


@pytest.mark.data
def test_mnist_disjoint_samples_moves_half_of_private_train_to_public():
    root = shared_mnist_or_skip()
    s = load_splits(DatasetConfig(name="mnist", protocol="disjoint_samples"), root)
    c = s.counts()
    per_class = [5923, 6742, 5958, 6131, 5842]  # MNIST-train counts of digits 0-4
    assert c["private_train"] + c["private_val"] == sum(n - round(0.5 * n) for n in per_class)
    assert c["public"] == 34265 + 30596 - (c["private_train"] + c["private_val"])
    assert set(s.public[1].tolist()) == set(range(10))


def test_missing_mnist_raises_with_where_to_put_it(tmp_path):
    with pytest.raises(DataUnavailable, match="MNIST not found under .*MNIST/raw.*MI_BENCH_DATA"):
        load_splits(DatasetConfig(name="mnist", download=False), tmp_path)


@pytest.mark.data
def test_truncated_mnist_file_is_named_with_its_expected_size(tmp_path):
    root = shared_mnist_or_skip()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).symlink_to(root / "MNIST" / "raw" / name)
    with open(root / "MNIST" / "raw" / "train-images-idx3-ubyte", "rb") as f:
        (raw / "train-images-idx3-ubyte").write_bytes(f.read(100_000))  # a download cut short
    with pytest.raises(DataUnavailable, match=r"train-images-idx3-ubyte is truncated: 100,000 bytes, "
                                              r"expected 47,040,016 bytes"):
        load_splits(DatasetConfig(name="mnist", download=False), tmp_path)
    (raw / "train-images-idx3-ubyte").unlink()
    (raw / "train-labels-idx1-ubyte").unlink()
    (raw / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + bytes(60_004))  # wrong magic
    (raw / "train-images-idx3-ubyte").symlink_to(root / "MNIST" / "raw" / "train-images-idx3-ubyte")
    with pytest.raises(DataUnavailable, match=r"train-labels-idx1-ubyte is corrupt: .*magic 2051.*expected "
                                              r"60,008 bytes, magic 2049"):
        load_splits(DatasetConfig(name="mnist", download=False), tmp_path)
