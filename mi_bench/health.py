"""Health verdicts: does each classifier of a run work well enough for its numbers to mean anything?

Every run checks its target, its evaluator (the ``eval`` judge) and each other judge
(``resnet``, ``robust``), from what its record holds - so the same verdict is computed for a new
run (stored as ``record["health"]``) and for any older record (:func:`of`):

* **accuracy against chance**: the classifier's test accuracy must be at least
  ``health.min_target_acc`` (the target, on the private test split) or ``health.min_judge_acc``
  (the evaluator and every judge, on the domain's test split), and at least
  ``health.min_chance_ratio`` times chance (1 / the number of classes it tells apart: the private
  classes for the target, the domain's classes for the evaluator and the judges; the chance check
  is skipped where that many times chance would be 100% or more, i.e. two classes);
* **rejection of real images** (judges with a "none" class): a judge that rejects more than
  ``health.max_reject_real`` of the real test images has a reject class that swallows real
  people or digits;
* **rejection of the reconstructions**: a judge that rejects more than ``health.max_reject_recon``
  of the run's reconstructions gets a *note* (its accuracy counts them as failures), not a
  problem: an attack that produces junk against a strong defense is a result, not a broken judge.

A classifier below a threshold has a *problem*: one line saying what is wrong and naming the fix
(more images per person, pretrained weights - ``target.pretrained=`` -, public pretraining -
``target.pretrain=public`` -, longer training or another preset). ``mi-bench run`` prints one
warning line per problem under its table (:func:`lines`); the leaderboard, its Markdown/CSV/
terminal tables and the HTML report mark every number computed with that classifier
(:data:`CELLS`, :func:`marks`) and say why in a footnote.

The thresholds are the ``health`` section of the config (:class:`HealthConfig`). They decide
how a run is read, never what it computes, so they are left out of every config hash and
artifact key (``mi_bench.config.NON_SEMANTIC``). A record stores the thresholds its verdict used;
records written before the verdict existed are judged with the defaults (or the record's own
``health`` section). Pure functions over the record dict: nothing here loads a model or data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from mi_bench.params import param

FACE_UNIT = "identity"  # protocol.data.unit of the face datasets (a class is a person)


@dataclass
class HealthConfig:
    """Thresholds of the health verdicts (``mi_bench.health``): how a run is read, not what it
    computes (left out of every hash)."""

    min_target_acc: float = param(0.5, ge=0.0, le=1.0,
                                  help="a target below this test accuracy (private test split) is "
                                       "flagged: it is not the classifier a defense is meant to protect")
    min_judge_acc: float = param(0.5, ge=0.0, le=1.0,
                                 help="the evaluator or a judge below this test accuracy is flagged: "
                                      "its verdicts on reconstructions mean little")
    min_chance_ratio: float = param(3.0, ge=0.0,
                                    help="every classifier must reach this many times chance "
                                         "(1 / its number of classes); skipped where that is >= 100%")
    max_reject_real: float = param(0.1, ge=0.0, le=1.0,
                                   help="a judge rejecting ('none' class) more than this share of the "
                                        "real test images is flagged")
    max_reject_recon: float = param(0.5, ge=0.0, le=1.0,
                                    help="a judge rejecting more than this share of the reconstructions "
                                         "gets a note (not a problem: junk reconstructions are a result)")


# the leaderboard cells computed with each classifier (a judge's name -> its accuracy column)
CELLS = {
    "target": ("target_acc",),
    "eval": ("attack_acc", "attack_acc_top5", "consensus_acc", "knn_dist", "fid_eval", "kid_eval"),
}


def cells_of(who: str) -> tuple[str, ...]:
    """Leaderboard columns holding numbers computed with classifier ``who`` (``target``,
    ``eval`` or a judge's name)."""
    return CELLS.get(who, (f"attack_acc_{who}", "consensus_acc"))


def thresholds(record: dict[str, Any], override: HealthConfig | dict[str, Any] | None = None) -> dict[str, float]:
    """The thresholds to judge ``record`` with: ``override``, else the record's ``health`` config
    section, the defaults filling what either lacks."""
    out = dataclasses.asdict(HealthConfig())
    src = override if override is not None else ((record.get("config") or {}).get("health") or {})
    if dataclasses.is_dataclass(src):
        src = dataclasses.asdict(src)
    out.update({k: float(v) for k, v in dict(src).items() if k in out and isinstance(v, (int, float))})
    return out


def _num(v: Any) -> float | None:
    """``v`` as a float; None for a missing, non-numeric or non-finite value."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _thr(v: float) -> str:  # a threshold: 50%, 12.5%
    return f"{round(100 * v, 2):g}%"


def _ratio(v: float) -> str:
    return f"{v:.1f}x" if v < 10 else f"{v:.0f}x"


# -- the fixes ---------------------------------------------------------------------------------

def _more_images(record: dict[str, Any]) -> str:
    data = (record.get("protocol") or {}).get("data") or {}
    ds = (record.get("config") or {}).get("dataset") or {}
    if data.get("unit") == FACE_UNIT or ds.get("name") in ("lfw", "celeba", "folder", "facescrub", "att"):
        per = data.get("images_per_private_identity") or {}
        now = [f"now {face_min}" for face_min in [((ds.get("face") or {}).get("min_images"))] if face_min]
        if _num(per.get("mean")) is not None:
            now.append(f"{per['mean']:.0f} per person on average")
        return ("more images per person (dataset.face.min_images=N keeps only people with at least N "
                "photos" + (f"; {', '.join(now)}" if now else "") + ")")
    cap = _num(ds.get("max_train_per_class"))
    if cap:
        return f"more training images per class (dataset.max_train_per_class=0 uses all; now {cap:.0f})"
    return "more training images per class"


def _preset(record: dict[str, Any], section: str) -> str:
    cfg = record.get("config") or {}
    preset = cfg.get("preset", "?")
    epochs = _section(cfg, section).get("epochs")
    longer = f"more {section}.epochs" + (f" (now {epochs})" if epochs is not None else "")
    if preset == "paper":
        return longer
    return f"another preset (preset=paper trains longer than {preset}) or {longer}"


def _section(cfg: dict[str, Any], section: str) -> dict[str, Any]:
    node: Any = cfg
    for part in section.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _fix_accuracy(record: dict[str, Any], who: str) -> str:
    cfg = record.get("config") or {}
    section = {"target": "target", "eval": "evaluator"}.get(who, f"judge.{who}")
    parts = [_more_images(record)]
    own = _section(cfg, section)
    if not own.get("pretrained"):
        parts.append(f"{section}.pretrained=<weights file> (start from pretrained weights)")
    if who == "target" and own.get("pretrain") != "public":
        parts.append("target.pretrain=public (pretrain on the public data first)")
    parts.append(_preset(record, section))
    if who not in ("target", "eval"):
        others = [j for j in (cfg.get("judges") or []) if j != who]
        if others:
            parts.append(f"or leave it out (judges=[{','.join(others)}])")
    return ", ".join(parts)


# -- the verdict --------------------------------------------------------------------------------

def _classifier(record: dict[str, Any], who: str, acc: float | None, n_classes: int, split: str,
                t: dict[str, float], *, reject_real: float | None = None,
                reject_recon: float | None = None) -> dict[str, Any]:
    label = {"target": "target", "eval": "evaluator (eval judge)"}.get(who, f"judge {who}")
    chance = 1.0 / n_classes if n_classes else None
    out: dict[str, Any] = {"ok": None, "test_acc": acc, "classes": n_classes, "chance": chance,
                           "chance_ratio": None, "reject_real": reject_real, "reject_recon": reject_recon,
                           "problems": [], "notes": []}
    if acc is not None:
        min_acc = t["min_target_acc"] if who == "target" else t["min_judge_acc"]
        ratio = acc / chance if chance else None
        out["chance_ratio"] = ratio
        need_ratio = chance is not None and t["min_chance_ratio"] * chance < 1.0
        low = acc < min_acc
        near_chance = bool(need_ratio and ratio is not None and ratio < t["min_chance_ratio"])
        if low or near_chance:
            why = []
            if low:
                why.append(f"under the {_thr(min_acc)} minimum")
            if near_chance:
                why.append(f"under {t['min_chance_ratio']:g}x chance")
            what = ("a defense is not protecting a working classifier" if who == "target"
                    else "its verdicts on the reconstructions mean little")
            ratio_s = f", {_ratio(ratio)} chance ({_pct(chance)})" if ratio is not None else ""
            out["problems"].append({
                "check": "accuracy",
                "summary": f"{label} {_pct(acc)} test acc on {n_classes} {split}{ratio_s}: "
                           f"{' and '.join(why)}",
                "consequence": what,
                "fix": _fix_accuracy(record, who),
            })
    if reject_real is not None and reject_real > t["max_reject_real"]:
        nf = _num(((record.get("config") or {}).get("judge") or {}).get("none_fraction"))
        out["problems"].append({
            "check": "reject_real",
            "summary": f"{label} rejects {_pct(reject_real)} of real test images "
                       f"(over {_thr(t['max_reject_real'])})",
            "consequence": "its 'none' class swallows real images, so it fails reconstructions that look right",
            "fix": "a smaller judge.none_fraction" + (f" (now {nf:g})" if nf is not None else "") + ", "
                   + _preset(record, {"eval": "evaluator"}.get(who, f"judge.{who}")),
        })
    if reject_recon is not None and reject_recon > t["max_reject_recon"]:
        out["notes"].append(f"{label} rejects {_pct(reject_recon)} of the reconstructions ('none'): "
                            "its attack accuracy counts them as failures")
    if acc is not None or reject_real is not None:
        out["ok"] = not out["problems"]
    return out


def verdict(record: dict[str, Any], override: HealthConfig | dict[str, Any] | None = None) -> dict[str, Any]:
    """The health verdict of one run from its record (any schema): ``thresholds``; ``target``,
    ``eval`` and ``judges`` (name -> verdict), each with ``ok`` (None: nothing to judge by),
    ``test_acc``, ``classes``, ``chance``, ``chance_ratio``, ``reject_real``, ``reject_recon``,
    ``problems`` (``check``, ``summary``, ``consequence``, ``fix``) and ``notes``; ``ok`` over all."""
    t = thresholds(record, override)
    m = record.get("metrics") or {}
    proto = record.get("protocol") or {}
    data = proto.get("data") or {}
    n_private = len(data.get("private_classes") or []) or int(
        _num(((record.get("config") or {}).get("dataset") or {}).get("private_classes")) or 0)
    n_domain = int(_num(data.get("num_domain_classes")) or n_private)
    info = proto.get("judges") or {}
    scored = m.get("judges") or {}

    def judge(name: str, acc: float | None) -> dict[str, Any]:
        i, s = info.get(name) or {}, scored.get(name) or {}
        return _classifier(record, name, acc, n_domain, "classes", t,
                           reject_real=_num(i.get("reject_rate_real")), reject_recon=_num(s.get("rejected")))

    out: dict[str, Any] = {
        "thresholds": t,
        "target": _classifier(record, "target", _num(m.get("target_acc")), n_private, "private classes", t),
        "eval": judge("eval", _num(m.get("eval_acc")) if _num(m.get("eval_acc")) is not None
                      else _num((info.get("eval") or {}).get("test_acc"))),
        "judges": {name: judge(name, _num((info.get(name) or {}).get("test_acc")))
                   for name in [*info, *scored] if name != "eval"},
    }
    out["ok"] = all(v["ok"] is not False for v in _all(out))
    return out


def _all(v: dict[str, Any]) -> list[dict[str, Any]]:
    return [v["target"], v["eval"], *v["judges"].values()]


def _named(v: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("target", v["target"]), ("eval", v["eval"]), *v["judges"].items()]


def of(record: dict[str, Any]) -> dict[str, Any]:
    """The record's stored verdict, else (a record from before verdicts) the one computed now."""
    h = record.get("health")
    if isinstance(h, dict) and "target" in h and "judges" in h:
        return h
    return verdict(record)


def problems(v: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(classifier, problem)`` of every problem of verdict ``v``, target first."""
    return [(who, p) for who, c in _named(v) for p in c.get("problems") or []]


def lines(v: dict[str, Any]) -> list[str]:
    """One plain line per problem (``warning: ...``) and per note (``note: ...``) of verdict ``v``:
    what the run table prints under its numbers."""
    out = [f"warning: {p['summary']}: {p['consequence']}. Fix: {p['fix']}." for _, p in problems(v)]
    out += [f"note: {n}." for _, c in _named(v) for n in c.get("notes") or []]
    return out


def marks(v: dict[str, Any]) -> dict[str, list[str]]:
    """``{leaderboard column: [reason, ...]}``: the cells of a run computed with a classifier
    that has a problem, with the problems' summaries (the footnotes)."""
    out: dict[str, list[str]] = {}
    for who, p in problems(v):
        for col in cells_of(who):
            if p["summary"] not in out.setdefault(col, []):
                out[col].append(p["summary"])
    return out


def group_marks(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    """:func:`marks` of several runs (a leaderboard entry's seeds) together: a cell is marked
    when any of its runs has a problem there."""
    out: dict[str, list[str]] = {}
    for r in records:
        for col, why in marks(of(r)).items():
            have = out.setdefault(col, [])
            have += [w for w in why if w not in have]
    return out
