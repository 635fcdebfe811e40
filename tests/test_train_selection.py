"""Model selection in the trainer: best validation epoch, last epoch, and no validation split."""

import torch

from mi_bench.models import build_model
from mi_bench.train import TrainConfig, train_classifier


def _train(val, selection, epochs=3):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 32, 32, generator=g), torch.arange(64) % 4
    return train_classifier(lambda: build_model("mcnn", num_classes=4, in_channels=1, width=0.25),
                            (x, y), val(x, y), TrainConfig(epochs=epochs, batch_size=16, selection=selection),
                            seed=0)


def test_without_a_validation_split_the_last_epoch_is_kept_and_no_accuracy_is_claimed():
    for selection in ("best_val", "last"):
        res = _train(lambda x, y: (x[:0], y[:0]), selection)
        assert res.best_epoch == 3, selection  # was epoch 1 under best_val (the first kept)
        assert res.val_acc != res.val_acc  # NaN: there was nothing to measure (was 0.0)


def test_best_val_keeps_the_best_epoch_and_reports_its_accuracy():
    res = _train(lambda x, y: (x[:16], y[:16]), "best_val")
    accs = [r["val_acc"] for r in res.history]
    assert res.val_acc == max(accs)
    # ties go to the later epoch (>=)
    assert res.best_epoch == max(i + 1 for i, a in enumerate(accs) if a == max(accs))
    last = _train(lambda x, y: (x[:16], y[:16]), "last")
    assert last.best_epoch == 3 and last.val_acc == last.history[-1]["val_acc"]
