"""``mi-bench run``: train (or load) the target, the judges and the attack's prior, invert, score,
store and show; and ``mi-bench rescore``'s scoring of a stored run.

A run, in order:

1. the runtime (threads, device, performance options) and the artifact cache (:class:`Runner`);
2. the data (``mi_bench.data.load_splits``) and the attacked classes, checked;
3. a check that its results can be stored (``mi_bench.results.store.preflight``), before any
   training;
4. the trained stages, each trained once and then loaded by its cache key
   (:class:`mi_bench.stages.Stages`: target, judges, prior, per-target artifact; the keys are
   documented there);
5. the inversion (the attack plugin's ``invert``), rounded to the 8-bit images the run folder
   keeps, so that ``mi-bench rescore`` of an unchanged run reproduces every number;
6. the scores (:class:`mi_bench.scoring.Scorer`, the one scorer of run and rescore);
7. the run folder and the record (``mi_bench.record.build_record``): reconstructions, grid,
   ``record.json`` first, then the database index, so a finished run never loses its record.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from mi_bench.artifacts import ArtifactStore, resolve_cache_dir
from mi_bench.config import RunConfig
from mi_bench.data import DataSplits, load_splits, resolve_data_root
from mi_bench.errors import ArtifactError, ResultsError
from mi_bench.interfaces import Inversion
from mi_bench.inversion_cap import budget_classes, cap_classes
from mi_bench.judges import Judge
from mi_bench.labelling import copy_labels
from mi_bench.prior_quality import PRIOR_GRID, prior_quality, write_prior_grid
from mi_bench.record import RESCORE_COMPARED, build_record, new_run_id
from mi_bench.results.store import ResultStore, preflight
from mi_bench.runs import (
    GRID, RECONSTRUCTIONS, copy_reconstructions, load_reconstructions, quantize, run_dir,
    save_reconstructions, write_grid, write_record,
)
from mi_bench.runtime import NULL_BARS, Accel, Bars, configure_device, resolve_device, set_threads
from mi_bench.scoring import Scorer
from mi_bench.stages import Stages, make_attack
from mi_bench.train import accuracy

log = logging.getLogger(__name__)


class Runner:
    def __init__(self, cfg: RunConfig, bars: Bars = NULL_BARS, *, index: bool = True) -> None:
        """``index=False``: write the run's ``record.json`` but leave the SQLite index alone
        (Slurm workers on other hosts; the submitting host indexes their records)."""
        self.cfg = cfg
        self.bars = bars
        self.index = index
        set_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.device_settings = configure_device(self.device, cfg.tf32)
        self.accel = Accel.from_config(cfg)
        self.store = ArtifactStore(resolve_cache_dir(cfg.cache_dir))

    def stages(self, splits: DataSplits) -> Stages:
        """The train-or-load stages of this runner's config on ``splits`` (its cache, device, options)."""
        return Stages(self.cfg, splits, self.store, device=self.device, accel=self.accel, bars=self.bars)

    def load_splits(self) -> tuple[DataSplits, float]:
        """The run's data and the seconds it took to load."""
        t0 = time.perf_counter()
        with self.bars.stage(f"data ({self.cfg.dataset.name})"):
            splits = load_splits(self.cfg.dataset, resolve_data_root(self.cfg.data_root), cache_dir=self.store.root)
        return splits, round(time.perf_counter() - t0, 3)

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        t_start = time.perf_counter()
        run_id = new_run_id()
        splits, data_s = self.load_splits()
        classes = list(cfg.classes) or list(range(splits.num_private_classes))
        splits.check_classes(classes, "classes=")
        classes, cap = cap_classes(classes, cfg.attack, cfg.seed)  # attack.max_latents (None: no cap)
        preflight(cfg, index=self.index)  # before any training: where the results go is usable
        stages = self.stages(splits)
        stages.times["data"] = data_s
        target = stages.target()
        judges = stages.judges()
        with stages.timed("utility"):
            target_acc = accuracy(target, *splits.private_test)
        attack = make_attack(cfg, splits, self.device)
        attack.accel = self.accel
        for p in target.parameters():
            p.requires_grad_(False)
        prior = {**stages.prior(attack, target), **stages.aux(attack, target)}
        with stages.timed("prior_quality"):  # a measurement: no key, hash or inversion draw changes
            stages.prior_quality, self._prior_samples = prior_quality(
                attack, prior, judges["eval"].model, splits, n=cfg.eval.prior_kid_samples, seed=cfg.seed,
                collapse_ratio=cfg.judge.collapse_ratio)
        with stages.timed("inversion"):
            # attack.time_budget_s: two timed iterations decide how many classes fit (None: no budget)
            classes, cap = budget_classes(cfg, splits, target, prior, classes, cap, device=self.device,
                                          accel=self.accel)
            inversion = attack.invert(target, prior, classes, seed=cfg.seed, progress=self.bars)
        # scored as saved (8-bit), so `mi-bench rescore` of this run reproduces its numbers exactly
        inversion = dataclasses.replace(inversion, images=quantize(inversion.images))
        if cap is not None:  # stated in the record (protocol.inversion.cap) and the run table
            inversion = dataclasses.replace(inversion, protocol={**inversion.protocol, "cap": cap})
        with stages.timed("scoring"), self.bars.stage("scoring"):
            metrics = Scorer(cfg, splits, device=self.device, store=self.store).score(inversion, judges, target_acc)
        return self._store(run_id, t_start, splits, stages, classes, inversion, judges, metrics,
                           requirements=dataclasses.asdict(attack.requirements))

    def rescore(self, source: dict[str, Any], folder: Path, splits: DataSplits | None = None) -> dict[str, Any]:
        """Score the reconstructions saved in run folder ``folder`` (of the record ``source``)
        again, with this runner's judges (trained or loaded) and today's metric code, and store
        a new record: its own run id and folder (a copy of the reconstructions, a new grid),
        ``rescored_from`` = the old run id and ``rescore`` = how. The target, the prior and the
        inversion are not re-run: their artifacts and stage times are the old record's; the
        target accuracy is recomputed when the target is in the cache, else kept (and said).
        ``splits``: the run's data, when the caller has loaded it already."""
        cfg = self.cfg
        t_start = time.perf_counter()
        run_id = new_run_id()
        images, classes = load_reconstructions(folder)
        old_id = source.get("run_id", "?")
        attacked = (source.get("protocol") or {}).get("attacked_classes")
        if attacked is not None and list(attacked) != list(classes):
            raise ArtifactError(f"{folder / RECONSTRUCTIONS} holds classes {classes} but run {old_id} "
                                f"attacked {attacked}: the folder does not belong to that record")
        data_s = None
        if splits is None:
            splits, data_s = self.load_splits()
        splits.check_classes(classes, f"{folder / RECONSTRUCTIONS}")
        preflight(cfg, index=self.index)
        stages = self.stages(splits)
        if data_s is not None:
            stages.times["data"] = data_s
        judges = stages.judges()
        with stages.timed("utility"):
            target_acc, target_note = stages.cached_target_accuracy(source)
        protocol = source.get("protocol") or {}
        inversion = Inversion(images, classes, protocol=protocol.get("inversion") or {})
        if protocol.get("prior_quality") is not None:  # the prior is the old run's: so is its KID
            stages.prior_quality = dict(protocol["prior_quality"])
        with stages.timed("scoring"), self.bars.stage("scoring"):
            metrics = Scorer(cfg, splits, device=self.device, store=self.store).score(inversion, judges, target_acc)
        kept = ("target", "prior")
        artifacts = {**{k: v for k, v in (source.get("artifacts") or {}).items() if k in kept},
                     **stages.artifacts}
        times = {k: v for k, v in (source.get("stage_seconds") or {}).items()
                 if k in (*kept, "prior_quality", "inversion")}
        extra = {
            "artifacts": artifacts,
            "stage_seconds": {**times, **stages.times},
            "defense_report": source.get("defense_report", {}),
            "rescored_from": old_id,
            "rescore": {
                "from": old_id, "from_created_at": source.get("created_at"), "from_run_dir": str(folder),
                "from_metrics": {k: (source.get("metrics") or {}).get(k) for k in RESCORE_COMPARED},
                "from_rejected": {j: r.get("rejected") for j, r in
                                  ((source.get("metrics") or {}).get("judges") or {}).items()},
                "reconstructions": f"read from {folder / RECONSTRUCTIONS} as uint8 (x / 255): "
                                   + ("the images the run scored" if "reconstructions" in protocol else
                                      "the run scored its float images before saving them, so its "
                                      "numbers can differ by 8-bit rounding (at most 1/510 a pixel)"),
                "target_acc": target_note,
                "kept": "target, prior and inversion: artifacts, stage times and inversion protocol of "
                        f"run {old_id}; stage times of the judges, utility and scoring are this re-scoring's",
            },
        }
        record = self._store(run_id, t_start, splits, stages, classes, inversion, judges, metrics,
                             requirements=protocol.get("attack_requirements") or {}, source_folder=folder,
                             extra=extra)
        copy_labels(folder, Path(record["run_dir"]), run_id)
        return record

    def _store(self, run_id: str, t_start: float, splits: DataSplits, stages: Stages, classes: list[int],
               inversion: Inversion, judges: dict[str, Judge], metrics: dict[str, Any], *,
               requirements: dict[str, Any], source_folder: Path | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run folder (reconstructions - saved, or copied from ``source_folder`` - and grid)
        and the record: ``record.json`` first, then the database index. ``extra`` adds or
        replaces record fields (``rescore``: the kept artifacts and stage times)."""
        cfg = self.cfg
        out_dir = run_dir(cfg.results_dir, run_id)
        if source_folder is None:
            save_reconstructions(out_dir, inversion.images, inversion.classes)
        else:
            copy_reconstructions(source_folder, out_dir)
        self._prior_grid(out_dir, stages, source_folder)
        grid = write_grid(out_dir / GRID, cfg, splits, inversion, metrics)
        record = build_record(cfg, run_id=run_id, splits=splits, classes=classes, inversion=inversion,
                              judges=judges, metrics=metrics, requirements=requirements, stages=stages,
                              run_dir=str(out_dir), grid=str(grid) if grid else None, device=self.device,
                              device_settings=self.device_settings,
                              wall_seconds=time.perf_counter() - t_start, extra=extra)
        path = write_record(out_dir, record)  # first: the source of truth, never lost
        if self.index:
            try:
                ResultStore(cfg.results_db).append(record)
            except ResultsError as exc:
                raise ResultsError(f"{exc} - the run's record is safe in {path}; index it later with "
                                   f"'mi-bench db sync --db {cfg.results_db} --runs {cfg.results_dir}'") from None
        return record

    def _prior_grid(self, out_dir: Path, stages: Stages, source_folder: Path | None) -> None:
        """The prior's sample grid (``prior_grid.png``) in the run folder, its path in
        ``prior_quality["grid"]``: written from this run's samples, or copied from the re-scored
        run's folder."""
        pq = getattr(stages, "prior_quality", None)
        if pq is None:
            return
        samples = getattr(self, "_prior_samples", None) if source_folder is None else None
        try:
            if samples is not None:
                pq["grid"] = str(write_prior_grid(out_dir / PRIOR_GRID, samples))
            elif source_folder is not None and (Path(source_folder) / PRIOR_GRID).is_file():
                shutil.copyfile(Path(source_folder) / PRIOR_GRID, out_dir / PRIOR_GRID)
                pq["grid"] = str(out_dir / PRIOR_GRID)
            elif source_folder is not None:
                pq.pop("grid", None)
        except OSError as exc:  # the record matters more than the picture
            log.warning("prior grid not written: %s", exc)
            pq["grid"] = None


def run(cfg: RunConfig, bars: Bars = NULL_BARS, *, index: bool = True) -> dict[str, Any]:
    return Runner(cfg, bars, index=index).run()
