"""One scorer for ``mi-bench run`` and ``mi-bench rescore``: every metric of one inversion.

:meth:`Scorer.score` computes, in this order and the same way for every attack and for a run as
for its re-scoring: ``target_acc`` (given) and ``eval_acc`` (the evaluator's test accuracy),
:func:`mi_bench.metrics.score_inversion` (the ``eval`` judge is the evaluator),
:func:`mi_bench.judges.score_judges` (every judge, the consensus) and per-class diversity
(:func:`mi_bench.diversity.diversity`, in the features of ``judge.diversity_judge``, plus LPIPS
when available). The reconstructions it is given are the 8-bit images saved in the run folder
(:func:`mi_bench.runs.quantize`), so re-scoring an unchanged run reproduces its numbers exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from mi_bench.artifacts import ArtifactStore
from mi_bench.config import RunConfig
from mi_bench.data import DataSplits
from mi_bench.diversity import diversity
from mi_bench.errors import DistanceUnavailable, WeightsUnavailable, metric_failure
from mi_bench.interfaces import Inversion
from mi_bench.judges import Judge, score_judges
from mi_bench.metrics import embed, score_inversion


class Scorer:
    """Scores inversions of one run's dataset with the run's metric settings."""

    def __init__(self, cfg: RunConfig, splits: DataSplits, *, device: torch.device,
                 store: ArtifactStore | None = None) -> None:
        self.cfg, self.splits, self.device, self.store = cfg, splits, device, store

    def score(self, inversion: Inversion, judges: dict[str, Judge], target_acc: float | None) -> dict[str, Any]:
        cfg = self.cfg
        metrics = score_inversion(inversion, judges["eval"].model, self.splits, device=self.device,
                                  options=cfg.eval, store=self.store)
        metrics.update(score_judges(judges, inversion.images, inversion.classes, self.splits.private_classes))
        self._diversity(metrics, inversion, judges[cfg.judge.diversity_judge])
        return {"target_acc": target_acc, "eval_acc": judges["eval"].info["test_acc"], **metrics}

    def _lpips_pairwise(self) -> dict[str, Any]:
        """LPIPS as a diversity distance (built on first use with the run's ``eval`` options; its
        weights missing offline make it unavailable, recorded in ``metric_absent``)."""
        from mi_bench.perceptual import lpips_model, lpips_pairwise

        e = self.cfg.eval
        if not e.lpips:
            return {}
        state: dict[str, Any] = {}

        def fn(x: torch.Tensor) -> torch.Tensor:
            if "model" not in state:
                try:
                    state["model"] = lpips_model(e.lpips_net, self.device, e.download)[0]
                except WeightsUnavailable as exc:
                    raise DistanceUnavailable(str(exc)) from None
            return lpips_pairwise(state["model"], x, x, min_size=e.lpips_min_size)
        return {"lpips": fn}

    def _diversity(self, metrics: dict[str, Any], inversion: Inversion, judge: Judge) -> None:
        x_tr, y_tr = self.splits.private_train
        real = [x_tr[y_tr == c] for c in inversion.classes]
        size = self.splits.image_shape[-1]
        try:
            report, absent = diversity(inversion.images, inversion.classes, real,
                                       lambda x: embed(judge.model, x, size), judge=judge.name,
                                       collapse_ratio=self.cfg.judge.collapse_ratio,
                                       pairwise=self._lpips_pairwise())
            if not self.cfg.eval.lpips:
                absent["diversity_lpips"] = "disabled (eval.lpips=false)"
            metrics.update(report)
            metrics["metric_absent"].update(absent)
        except Exception as exc:  # noqa: BLE001 - reported, never silently 0
            metrics.update(diversity=None, diversity_ratio=None, collapsed_classes=None)
            metrics["metric_errors"]["diversity"] = metric_failure(exc, "diversity")
