"""``mi-bench data``: the protocol a config would produce, before any training.

:func:`plan` loads the data exactly as ``mi-bench run`` does (``Runner.load_splits``: the dataset
plugin, the face cache) and reports, for the composed config:

* the private and public identities, the images per identity in each split (min / median / max)
  and the image size and channels;
* the inversion: the classes attacked (after ``attack.max_latents``, :mod:`mi_bench.inversion_cap`),
  the latents per class (samples x restarts) and the reconstructions kept;
* an estimate of each stage's time on this machine (threads and device of the config): a few
  real steps of the real networks are timed and multiplied by the configured step counts
  (:func:`estimate_stages`). Stages whose artifact is already in the cache cost nothing;
* warnings that the data alone can give (:func:`data_warnings`), each naming a fix.

How the steps are timed (``measured``, about a second per stage on the digits presets):

* classifiers (target, its public pretraining, evaluator, judges): the trainer itself
  (``mi_bench.train.train_classifier``, the defense or judge recipe included) for 2 epochs of
  one batch of the real training set; the second epoch's time, times the real epochs x batches
  per epoch, plus one forward pass over the validation split per epoch (timed too);
* the prior: the attack's ``train_prior`` with ``gan_steps`` 2 (the second step; the first
  step's extra time, e.g. labelling the public set with the target, is counted once);
* the inversion: the attack's ``invert`` on every attacked class with 2 iterations (the random
  baseline: one sample per class), on untrained networks of the real sizes.

The timings are kept in the artifact cache (``<cache>/timing/<key>.json``, keyed by the stages'
artifact keys, the attack's settings, the classes, the device, threads, torch version and CPU
model) for :data:`TIMING_TTL_S` seconds, so asking again costs only the data loading;
``remeasure=True`` (``mi-bench data --remeasure``) times again. The output says when the
timings were measured.

Not estimated: scoring (FID, LPIPS, the judges' verdicts), the judges' health checks and LOMMA's
surrogates; the table says so. Bad input raises the errors ``mi-bench run`` raises (one line,
exit 2).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from mi_bench.config import RunConfig
from mi_bench.inversion_cap import cap_classes, latents_per_class
from mi_bench.registry import ATTACKS

# data-only warnings (thresholds)
FEW_TRAIN = 30  # median private training images per identity below which a scratch target is weak
FEW_TEST = 5  # private test images per identity below which the target's accuracy is coarse
FEW_PUBLIC = 1000  # public images below which a GAN prior is poor
FEW_EVAL = 10  # evaluation-train images per class below which the judges are weak
INVERSION_SHARE = 0.5  # inversion share of the estimated time above which a cap is suggested

MINI_STEPS = 2  # prior steps / inversion iterations timed (the second is the clean one)


# -- counts -------------------------------------------------------------------------------------

def _per_identity(y: torch.Tensor, labels: list[int] | None = None) -> dict[str, Any]:
    """min / median / max images per identity of labels ``y`` (``labels``: the identities to count,
    absent ones as 0; default: those present, unlabelled -1 left out)."""
    y = y[y >= 0]
    if labels is None:
        labels = sorted(int(v) for v in torch.unique(y).tolist())
    counts = torch.bincount(y, minlength=max(labels, default=-1) + 1) if len(y) else torch.zeros(0, dtype=torch.long)
    per = [int(counts[c]) if c < len(counts) else 0 for c in labels]
    if not per:
        return {"identities": 0, "images": 0, "min": 0, "median": 0, "max": 0}
    return {"identities": len(per), "images": int(sum(per)), "min": min(per),
            "median": statistics.median(per), "max": max(per)}


def split_counts(splits: Any) -> dict[str, dict[str, Any]]:
    """Images per identity of each split (private splits over the K private classes)."""
    k = list(range(splits.num_private_classes))
    out = {s: _per_identity(getattr(splits, s)[1], k) for s in ("private_train", "private_val", "private_test")}
    pub_y = splits.public[1]
    out["public"] = {**_per_identity(pub_y), "unlabelled": int((pub_y < 0).sum())}
    for s in ("eval_train", "eval_val", "eval_test"):
        out[s] = _per_identity(getattr(splits, s)[1])
    return out


# -- timing -------------------------------------------------------------------------------------

class StepClock:
    """A progress object (``task`` / ``advance``, as ``mi_bench.runtime.Bars``) that records when
    each step ended; on CUDA it waits for the device at each step so the times are real."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.tasks: list[dict[str, Any]] = []

    @contextmanager
    def stage(self, *_args: Any, **_kw: Any) -> Iterator[None]:
        yield

    def __getattr__(self, name: str) -> Any:  # anything else Bars offers: as the silent Bars
        from mi_bench.runtime import NULL_BARS

        return getattr(NULL_BARS, name)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Any]:
        self._sync()
        rec: dict[str, Any] = {"desc": description, "total": total, "times": [time.perf_counter()], "steps": [0]}
        self.tasks.append(rec)
        clock = self

        class _T:
            def advance(self, n: int = 1, **_info: Any) -> None:
                clock._sync()
                rec["times"].append(time.perf_counter())
                rec["steps"].append(rec["steps"][-1] + n)

        yield _T()

    @staticmethod
    def rates(rec: dict[str, Any]) -> tuple[float, float]:
        """(seconds per step after the first, the first step's extra seconds)."""
        t, s = rec["times"], rec["steps"]
        per = [(t[i + 1] - t[i]) / max(1, s[i + 1] - s[i]) for i in range(1, len(t) - 1)]
        first = (t[1] - t[0]) / max(1, s[1]) if len(t) > 1 else 0.0
        step = statistics.median(per) if per else first
        return step, max(0.0, first - step)


def _classifier_rate(make, data: tuple[torch.Tensor, torch.Tensor], tcfg: Any, *, defense: Any,
                     device: torch.device, accel: Any) -> tuple[float, float]:
    """(seconds per training batch, seconds per validation image) of the trainer on ``data``."""
    from mi_bench.train import accuracy, train_classifier

    x, y = data
    n = min(len(y), tcfg.batch_size)  # one batch per epoch
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:n]
    mini = dataclasses.replace(tcfg, epochs=2, milestones=[])
    clock = StepClock(device)
    res = train_classifier(make, (x[idx], y[idx]), (x[idx[:8]], y[idx[:8]]), mini, seed=0, defense=defense,
                           device=device, bars=clock, desc="timing", accel=accel)  # type: ignore[arg-type]
    rec = clock.tasks[-1]
    batches = max(1, res.history[-1]["batches"])
    per_batch = (rec["times"][-1] - rec["times"][-2]) / batches
    m = min(len(y), 256)
    t0 = time.perf_counter()
    accuracy(res.model, x[:m], y[:m])
    clock._sync()
    return per_batch, (time.perf_counter() - t0) / max(1, m)


def _batches_per_epoch(n: int, tcfg: Any, labels: torch.Tensor, defense: Any) -> int:
    from mi_bench.train import epoch_batches

    gen = torch.Generator().manual_seed(0)
    batches = None
    if defense is not None:
        try:
            batches = defense.epoch_batches(labels, tcfg.batch_size, gen)
        except Exception:  # noqa: BLE001 - a sampler that needs the configured optimiser (DP-SGD)
            batches = None
    if batches is None:
        batches = epoch_batches(n, tcfg, labels, gen)
    return len(batches)


def _stage(what: str, steps: str, estimate: float | None, *, per_step: float | None = None,
           note: str = "", cached: bool = False) -> dict[str, Any]:
    return {"stage": what, "steps": steps, "sec_per_step": per_step, "estimate_s": estimate,
            "cached": cached, "note": note}


def estimate_stages(cfg: RunConfig, splits: Any, classes: list[int], *, store: Any,
                    device: torch.device, accel: Any = None) -> list[dict[str, Any]]:
    """Each stage's estimated seconds (see the module doc). A stage that cannot be timed here
    says why in its ``note`` (``estimate_s`` None)."""
    from mi_bench.judges import JudgeRecipe
    from mi_bench.models import build_model
    from mi_bench.stages import artifact_plan, judge_specs, make_attack, make_defense, target_factory
    from mi_bench.train import pretrain_config, pretrain_set

    from mi_bench.runtime import NO_ACCEL, Accel

    accel = accel or NO_ACCEL  # the run's performance options: the target's and prior's, as in a run
    judge_accel = Accel(compile=accel.compile, channels_last=accel.channels_last)  # judges: float32
    plan = artifact_plan(cfg, splits)  # the keys a run would train or load (checks the target first)
    cached = {stage: store.exists(kind, key) for stage, (kind, key) in plan.items()}
    out: list[dict[str, Any]] = []

    def classifier(stage: str, make, train, val, tcfg, defense) -> None:
        n_b = _batches_per_epoch(len(train[1]), tcfg, train[1], defense)
        steps = f"{tcfg.epochs} epochs x {n_b} batches of {tcfg.batch_size}"
        if cached.get(stage):
            out.append(_stage(stage, steps, 0.0, cached=True, note="in the cache: loaded, not trained"))
            return
        try:
            per_batch, per_img = _classifier_rate(
                make, train, tcfg, defense=defense, device=device,
                accel=accel if stage in ("target", "pretrain") else judge_accel)
        except Exception as exc:  # noqa: BLE001 - e.g. a privacy accountant refusing 2 steps of 1 batch
            out.append(_stage(stage, steps, None, note=f"not timed: {type(exc).__name__}: "
                                                       f"{str(exc).splitlines()[0] if str(exc) else ''}"))
            return
        est = tcfg.epochs * (n_b * per_batch + len(val[1]) * per_img)
        out.append(_stage(stage, steps, est, per_step=per_batch,
                          note=f"{tcfg.model} x{tcfg.width}, {len(train[1]):,} images"))

    c = splits.image_shape[0]
    t = cfg.target
    if cfg.target_checkpoint:
        out.append(_stage("target", "-", 0.0, cached=True, note=f"target_checkpoint={cfg.target_checkpoint}"))
    else:
        if t.pretrain == "public":
            x, y, pcls = pretrain_set(splits.public, splits.private_classes, t.pretrain_min_images)
            if len(pcls) >= 2:
                pmake = lambda: build_model(t.model, num_classes=len(pcls), in_channels=c,  # noqa: E731
                                            width=t.width, pretrained=t.pretrained,
                                            pretrained_sha256=t.pretrained_sha256, what="target")
                classifier("pretrain", pmake, (x, y), (x[:0], y[:0]), pretrain_config(t), None)
        defense = make_defense(cfg, splits)
        classifier("target", target_factory(cfg, splits), splits.private_train, splits.private_val,
                   t, defense)
    jc = cfg.judge
    shared = {"none_fraction": jc.none_fraction, "noise_fraction": jc.noise_fraction,
              "noise_amplitude": jc.noise_amplitude}
    k = splits.num_domain_classes
    for name, (_kind, _spec, tcfg, _seed) in judge_specs(cfg, splits).items():
        recipe = JudgeRecipe(None if name == "eval" else tcfg, num_classes=k, input_shape=splits.image_shape,
                             **shared)
        make = lambda tcfg=tcfg, name=name: build_model(tcfg.model, num_classes=k + 1, in_channels=c,  # noqa: E731
                                             width=tcfg.width, pretrained=getattr(tcfg, "pretrained", ""),
                                             pretrained_sha256=getattr(tcfg, "pretrained_sha256", ""),
                                             what=f"{name} judge")
        classifier("evaluator" if name == "eval" else f"judge-{name}", make, splits.eval_train,
                   splits.eval_val, tcfg, recipe)

    # the attack: prior, then inversion, on untrained networks of the real sizes
    a = cfg.attack
    attack_cls = ATTACKS.get(a.name)
    target = make_defense(cfg, splits).build_model(target_factory(cfg, splits)()).to(device).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    prior: dict[str, torch.Tensor] = {}
    has_prior = "prior" in plan
    if has_prior:
        real_steps = getattr(a, "gan_steps", None)
        mini_cfg = dataclasses.replace(a, gan_steps=min(MINI_STEPS, real_steps)) if real_steps else a
        attack = make_attack(dataclasses.replace(cfg, attack=mini_cfg), splits, device)
        attack.accel = accel
        per_target = attack_cls.requirements.prior == "per_target"
        clock = StepClock(device)
        t0 = time.perf_counter()
        prior = attack.train_prior(splits.public[0], target if per_target else None, seed=cfg.seed,
                                   progress=clock)
        wall = time.perf_counter() - t0
        steps = f"{real_steps:,} steps" if real_steps else "one pass"
        if cached.get("prior"):
            out.append(_stage("prior", steps, 0.0, cached=True, note="in the cache: loaded, not trained"))
        elif real_steps and clock.tasks:
            rec = clock.tasks[-1]
            per, extra = StepClock.rates(rec)
            scale = real_steps / mini_cfg.gan_steps
            est = extra + per * rec["steps"][-1] * scale
            out.append(_stage("prior", steps, est, per_step=per * rec["steps"][-1] / mini_cfg.gan_steps,
                              note=f"{len(splits.public[1]):,} public images"))
        else:
            out.append(_stage("prior", steps, wall, note="timed whole"))
    if "aux" in plan:
        out.append(_stage("aux", "-", 0.0 if cached.get("aux") else None, cached=bool(cached.get("aux")),
                          note="" if cached.get("aux") else "per-target artifact (LOMMA surrogates): not estimated"))
    if "aux" in plan and not cached.get("aux"):
        out.append(_stage("inversion", "-", None, note="needs the per-target artifact: not estimated"))
        return out
    if "aux" in plan:
        out.append(_stage("inversion", "-", None, note="LOMMA inversion: not estimated"))
        return out
    est, per, what = time_inversion(cfg, splits, target, prior, classes, device=device, accel=accel)
    out.append(_stage("inversion", what, est, per_step=per,
                      note=f"{len(classes) * latents_per_class(a):,} reconstruction candidates"))
    return out


def time_inversion(cfg: RunConfig, splits: Any, target: torch.nn.Module, prior: dict[str, torch.Tensor],
                   classes: list[int], *, device: torch.device, accel: Any = None
                   ) -> tuple[float, float | None, str]:
    """(estimated seconds, seconds per step, what the steps are) of the attack's inversion of
    ``classes``: its ``invert`` with 2 iterations (without ``iterations``: one sample per class),
    the second step times the configured steps, plus the first step's extra time once. Also
    used by ``attack.time_budget_s`` (:func:`mi_bench.inversion_cap.budget_classes`)."""
    from mi_bench.runtime import NO_ACCEL
    from mi_bench.stages import make_attack

    a = cfg.attack
    if hasattr(a, "iterations"):
        field, real = "iterations", a.iterations
    else:
        field, real = "samples_per_class", getattr(a, "samples_per_class", 1)
    mini = dataclasses.replace(a, **{field: min(MINI_STEPS if field == "iterations" else 1, real)})
    attack = make_attack(dataclasses.replace(cfg, attack=mini), splits, device)
    attack.accel = accel or NO_ACCEL
    clock = StepClock(device)
    t0 = time.perf_counter()
    attack.invert(target, prior, classes, seed=cfg.seed, progress=clock)
    wall = time.perf_counter() - t0
    what = f"{real:,} {field.replace('_', ' ')}" if field == "iterations" else \
        f"{len(classes)} classes x {real} samples"
    if clock.tasks and len(clock.tasks[-1]["times"]) > 1:
        rec = clock.tasks[-1]
        per, extra = StepClock.rates(rec)
        scale = real / getattr(mini, field)
        return extra + per * rec["steps"][-1] * scale, per, what
    return wall * real / max(1, getattr(mini, field)), None, what


# -- warnings -----------------------------------------------------------------------------------

def data_warnings(cfg: RunConfig, counts: dict[str, dict[str, Any]],
                  stages: list[dict[str, Any]] | None, inversion: dict[str, Any]) -> list[str]:
    """Health warnings known from the data (and the estimate) alone, each naming a fix."""
    out = []
    tr = counts["private_train"]
    if tr["median"] < FEW_TRAIN and not cfg.target_checkpoint:
        fix = ("try target.pretrain=public or more images per person" if not cfg.target.pretrain
               else "more images per person (the target is pretrained on the public set already)")
        out.append(f"{tr['median']:g} training images per person (median; min {tr['min']}): expect low "
                   f"accuracy from scratch; {fix}")
    te = counts["private_test"]
    if te["min"] < FEW_TEST:
        out.append(f"as few as {te['min']} test images per person: the target's test accuracy is coarse; "
                   "more images per person or a larger dataset.test_fraction")
    va = counts["private_val"]
    if va["images"] == 0 and "best_val" in (cfg.target.selection,):
        out.append("no private validation images: target.selection=best_val selects on nothing; "
                   "set dataset.val_fraction > 0 or target.selection=last")
    pub = counts["public"]
    if pub["images"] < FEW_PUBLIC:
        out.append(f"{pub['images']:,} public images: a GAN prior trained on so few is poor and the attack "
                   "measures the prior as much as the target; use a larger public set (dataset.face.public=...)")
    ev = counts["eval_train"]
    if ev["min"] < FEW_EVAL:
        out.append(f"the evaluator and judges learn from as few as {ev['min']} images of a class: their "
                   "verdicts are weak; more images per person")
    if stages:
        known = [s["estimate_s"] for s in stages if s["estimate_s"] is not None]
        inv = next((s["estimate_s"] for s in stages if s["stage"] == "inversion"), None)
        total = sum(known)
        if inv and total > 60 and inv / total > INVERSION_SHARE:
            per = inversion["latents_per_class"]
            half = max(per, per * max(1, inversion["classes_attacked"] // 2))
            out.append(f"inversion is {100 * inv / total:.0f}% of the estimated time ({inversion['latents']:,} "
                       f"latents): cap it, e.g. attack.max_latents={half} (half the classes), or lower "
                       "attack.samples_per_class")
    return out


# -- the plan -----------------------------------------------------------------------------------

TIMING_TTL_S = 7 * 24 * 3600  # a week: timings of this machine, reused until then
TIMING_VERSION = 1


def _cpu_model() -> str:
    import platform

    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _timing_path(cfg: RunConfig, plan_: dict[str, tuple[str, str]], classes: list[int], runner: Any):
    from mi_bench.config import stable_hash, to_dict

    key = {"v": TIMING_VERSION, "plan": {k: list(v) for k, v in plan_.items()},
           "attack": to_dict(cfg.attack), "classes": classes, "device": str(runner.device),
           "accel": repr(runner.accel), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "cpu": _cpu_model()}
    return runner.store.root / "timing" / f"{stable_hash(key)}.json"


def _timed_stages(cfg: RunConfig, splits: Any, classes: list[int], runner: Any, *,
                  remeasure: bool) -> tuple[list[dict[str, Any]], str | None]:
    """:func:`estimate_stages`, or its kept result when this machine timed the same stages
    within :data:`TIMING_TTL_S` (stages trained since then cost 0; one removed from the cache
    since then is not estimated). Returns the stages and when they were timed (None = now)."""
    import datetime as dt
    import json

    from mi_bench.fsutil import atomic_write_json
    from mi_bench.stages import artifact_plan

    plan_ = artifact_plan(cfg, splits)
    path = _timing_path(cfg, plan_, classes, runner)
    if not remeasure and path.is_file() and time.time() - path.stat().st_mtime < TIMING_TTL_S:
        try:
            kept = json.loads(path.read_text())
            stages, at = kept["stages"], kept["measured_at"]
        except (OSError, ValueError, KeyError):
            stages = None
        if stages is not None:
            for st in stages:
                where = plan_.get(st["stage"])
                now_cached = bool(where) and runner.store.exists(*where)
                if now_cached and not st.get("cached"):
                    st.update(estimate_s=0.0, cached=True, note="in the cache: loaded, not trained")
                elif st.get("cached") and where and not now_cached:
                    st.update(estimate_s=None, cached=False,
                              note="removed from the cache since it was timed: mi-bench data --remeasure")
            return stages, at
    stages = estimate_stages(cfg, splits, classes, store=runner.store, device=runner.device,
                             accel=runner.accel)
    at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    try:
        atomic_write_json(path, {"measured_at": at, "stages": stages})
    except OSError:  # a read-only cache: the plan is still printed, only not kept
        pass
    return stages, None


def plan(cfg: RunConfig, *, measure: bool = True, remeasure: bool = False,
         on_protocol: Any = None) -> dict[str, Any]:
    """The protocol ``cfg`` would produce (see the module doc), as a JSON-able dict.

    ``on_protocol``: called with the plan so far (``stages`` None, the warnings the data alone
    gives) once the data is loaded and before any step is timed, so ``mi-bench data`` prints the
    protocol in seconds and the estimate when its timing is done."""
    from mi_bench.pipeline import Runner

    t_start = time.perf_counter()
    runner = Runner(cfg, index=False)
    splits, data_s = runner.load_splits()
    requested = list(cfg.classes) or list(range(splits.num_private_classes))
    splits.check_classes(requested, "classes=")
    classes, cap = cap_classes(requested, cfg.attack, cfg.seed)
    a = cfg.attack
    per = latents_per_class(a)
    samples = int(getattr(a, "samples_per_class", 1))
    inversion = {
        "attack": a.name, "classes_requested": len(requested), "classes_attacked": len(classes),
        "attacked": classes, "left_out": (cap or {}).get("left_out", []),
        "samples_per_class": samples, "restarts": int(getattr(a, "restarts", 1)),
        "latents_per_class": per, "latents": len(classes) * per, "reconstructions": len(classes) * samples,
        "cap": cap,
    }
    counts = split_counts(splits)
    public_ids = counts["public"]["identities"]
    out: dict[str, Any] = {
        "dataset": splits.name, "protocol": splits.protocol, "preset": cfg.preset,
        "defense": cfg.defense.name, "attack": a.name,
        "image_shape": list(splits.image_shape),
        "private_identities": splits.num_private_classes, "public_identities": public_ids,
        "public_unlabelled": counts["public"].get("unlabelled", 0),
        "domain_classes": splits.num_domain_classes,
        "counts": counts, "inversion": inversion, "stages": None, "estimate_total_s": None,
        "machine": {"device": str(runner.device), "threads": cfg.threads},
        "warnings": data_warnings(cfg, counts, None, inversion), "data_seconds": data_s,
    }
    if on_protocol is not None:
        on_protocol({**out, "seconds": round(time.perf_counter() - t_start, 3)})
    stages = None
    t_measure = time.perf_counter()
    timed_at = None
    if measure:
        stages, timed_at = _timed_stages(cfg, splits, classes, runner, remeasure=remeasure)
    measure_s = time.perf_counter() - t_measure
    budget = float(getattr(a, "time_budget_s", 0.0) or 0.0)
    inv_est = next((s["estimate_s"] for s in stages or [] if s["stage"] == "inversion"), None)
    if budget > 0 and inv_est:  # attack.time_budget_s: what the run's own timing would likely keep
        n = len(classes)
        inversion["time_budget"] = {"budget_s": budget, "estimate_s": inv_est,
                                    "classes_fitting": n if inv_est <= budget else max(1, int(n * budget / inv_est))}
    out.update({
        "stages": stages,
        "estimate_total_s": (sum(s["estimate_s"] for s in stages if s["estimate_s"] is not None)
                             if stages else None),
        "warnings": data_warnings(cfg, counts, stages, inversion),
        "measure_seconds": round(measure_s, 3), "timings_from": timed_at,
        "seconds": round(time.perf_counter() - t_start, 3),
    })
    return out


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "?"
    if v >= 3600:
        return f"{v / 3600:.1f} h"
    if v >= 60:
        return f"{v / 60:.1f} min"
    return f"{v:.1f} s"


def render(p: dict[str, Any], part: str = "all", *, shown_warnings: int = 0) -> str:
    """The plan as the text ``mi-bench data`` prints: ``protocol`` (the data, the inversion, the
    warnings known so far), ``estimate`` (the timed stages and the warnings not yet shown: the
    first ``shown_warnings`` were printed with the protocol) or ``all``."""
    if part == "all":  # every warning once: with the protocol
        return render(p, "protocol") + ("\n" + render(p, "estimate", shown_warnings=len(p["warnings"]))
                                        if p["stages"] is not None else "")
    if part == "estimate":
        return "\n".join(_estimate_lines(p) + [f"warning: {w}" for w in p["warnings"][shown_warnings:]])
    c, h, w = p["image_shape"]
    lines = [f"{p['dataset']} ({p['protocol']}), preset {p['preset']}, defense {p['defense']}, attack {p['attack']}",
             f"images: {c} channel{'s' if c > 1 else ''} x {h} x {w}",
             f"private identities: {p['private_identities']}; public identities: {p['public_identities']}"
             + (f" (+ {p['public_unlabelled']:,} unlabelled public images)" if p["public_unlabelled"] else "")
             + f"; evaluator classes: {p['domain_classes']}",
             "images per identity:    identities   images   min  median   max"]
    for split, v in p["counts"].items():
        lines.append(f"  {split:<20} {v['identities']:>10} {v['images']:>8,} {v['min']:>5} "
                     f"{v['median']:>7g} {v['max']:>5}")
    inv = p["inversion"]
    lines.append(f"inversion: {inv['classes_attacked']} of {inv['classes_requested']} classes x "
                 f"{inv['samples_per_class']} samples x {inv['restarts']} restarts = {inv['latents']:,} latents, "
                 f"{inv['reconstructions']:,} reconstructions kept")
    if inv["cap"]:
        from mi_bench.inversion_cap import describe

        lines.append(f"  cap: {describe(inv['cap'])[1]}")
    tb = inv.get("time_budget")
    if tb:
        lines.append(f"  time budget: attack.time_budget_s={tb['budget_s']:g} against an estimated "
                     f"{_fmt_s(tb['estimate_s'])}: about {tb['classes_fitting']} of {inv['classes_attacked']} "
                     "classes fit (the run times its own inversion and decides)")
    return "\n".join(lines + [f"warning: {wline}" for wline in p["warnings"]])


def _estimate_lines(p: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if p["stages"] is not None:
        m = p["machine"]
        lines.append(f"estimated time on this machine ({m['device']}, threads={m['threads']}; "
                     + (f"timed at {p['timings_from']}, kept in the cache; --remeasure to time again):"
                        if p.get("timings_from") else f"timed in {p['measure_seconds']:.1f} s):"))
        for s in p["stages"]:
            rate = f"{s['sec_per_step'] * 1000:.1f} ms/step" if s["sec_per_step"] else ""
            lines.append(f"  {s['stage']:<12} {_fmt_s(s['estimate_s']):>9}  {s['steps']:<34} {rate:<16} {s['note']}")
        lines.append(f"  {'total':<12} {_fmt_s(p['estimate_total_s']):>9}  (plus data loading "
                     f"{p['data_seconds']:.1f} s; scoring and judge health checks not estimated)")
    return lines
