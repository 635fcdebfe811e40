"""The tables ``mi-bench`` prints: a run's summary, a re-scoring's before and after, where a sweep
stands and what a dry run would do (rich tables; ``mi_bench.cli`` prints them on stdout). The
leaderboard's terminal table is ``mi_bench.results.terminal``.
"""

from __future__ import annotations

from rich.table import Table


def run_table(rec: dict) -> Table:
    m = rec["metrics"]
    cfg = rec["config"]
    t = Table(title=f"run {rec['run_id']}: {cfg['attack']['name']} vs {rec['defense_label']} "
                    f"on {cfg['dataset']['name']} ({cfg['dataset']['protocol']}, preset {cfg['preset']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("protocol", overflow="fold")
    pct = lambda v: "failed" if v is None else f"{100 * v:.1f}%"  # noqa: E731

    def num(k: str, se: str | None = None, fmt: str = ".3f") -> str:
        if m.get(k) is not None:
            return f"{m[k]:{fmt}}" + (f" ± {m[se]:{fmt}}" if se and m.get(se) is not None else "")
        if k in m.get("metric_absent", {}):
            return "n/a"
        return "failed"

    shown: dict[str, str] = {}

    def why(k: str, text: str = "") -> str:
        """The protocol note, or for a missing metric its full reason (file and folder included;
        a reason already shown for another metric is referred to, not repeated)."""
        reason = m.get("metric_absent", {}).get(k) or m.get("metric_errors", {}).get(k)
        if m.get(k) is not None or not reason:
            return text
        if reason in shown:
            return f"as {shown[reason]}"
        shown[reason] = k
        return reason
    from mi_bench import health

    marks = health.marks(health.of(rec))  # numbers of a classifier that failed its health check
    warn = lambda k: " ⚠" if marks.get(k) else ""  # noqa: E731 - the warning lines under the table say why
    n_priv = len(rec["protocol"]["data"]["private_classes"])
    t.add_row("target acc", pct(m["target_acc"]) + warn("target_acc"), "private test split")
    t.add_row("eval acc", pct(m["eval_acc"]) + warn("attack_acc"),
              f"evaluator, all {rec['protocol']['data']['num_domain_classes']} classes")
    ci = m.get("attack_acc_ci")
    acc = pct(m["attack_acc"]) + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else "") + warn("attack_acc")
    t.add_row("attack acc (top-1)", acc, f"95% Wilson interval; chance {100 / n_priv:.0f}% over private "
              f"classes; {m['n_reconstructions']} reconstructions")
    cap = ((rec["protocol"].get("inversion") or {}).get("cap"))
    if cap:  # attack.max_latents: which classes were inverted, which left out (mi_bench.inversion_cap)
        from mi_bench.inversion_cap import describe as describe_cap

        t.add_row("inversion cap", *describe_cap(cap))
    judges = rec["protocol"].get("judges") or {}
    for name, res in (m.get("judges") or {}).items():
        if name == "eval":
            continue
        info = judges.get(name, {})
        lo, hi = res["acc_ci"]
        t.add_row(f"{name} judge acc",
                  f"{pct(res['acc'])} [{100 * lo:.0f}, {100 * hi:.0f}]" + warn(f"attack_acc_{name}"),
                  f"{info.get('architecture', '?')}, {info.get('augmentation', '?')} augmentation, "
                  f"adversarial {info.get('adversarial', '?')}; rejected {100 * res['rejected']:.0f}%")
    if m.get("consensus_acc") is not None:
        lo, hi = m["consensus_acc_ci"]
        t.add_row("consensus acc",
                  f"{pct(m['consensus_acc'])} [{100 * lo:.0f}, {100 * hi:.0f}]" + warn("consensus_acc"),
                  f"every judge ({', '.join(m['consensus_judges'])}) names the attacked class")
    t.add_row("attack acc (top-5)", pct(m["attack_acc_top5"]) + warn("attack_acc_top5"), "")
    div = m.get("diversity")
    if div:
        flagged = div["collapsed_classes"]
        t.add_row("diversity", f"{m['diversity_ratio']:.2f} x real",
                  "mean pairwise distance of reconstructions / of real images, per class; "
                  + (f"COLLAPSED classes: {flagged}" if flagged else "no class collapsed"))
    elif "diversity" in m.get("metric_errors", {}):
        t.add_row("diversity", "failed", m["metric_errors"]["diversity"][:60])
    t.add_row("per class", " ".join(f"{k}:{100 * v:.0f}" for k, v in m["per_class"].items()), "")
    n = m["n_reconstructions"]
    lp_net = cfg.get("eval", {}).get("lpips_net", "alex")
    t.add_row("KNN dist", num("knn_dist"), why("knn_dist", "evaluator features, same-class private train"))
    t.add_row("LPIPS-NN", num("lpips_nn"), why("lpips_nn", f"LPIPS ({lp_net}) to the nearest same-class "
                                                       "private train image; lower = closer"))
    t.add_row("FID (eval feats)", num("fid_eval"), why("fid_eval", f"vs private train; biased by n={n}"))
    t.add_row("KID (eval feats)", num("kid_eval", "kid_eval_se", ".3g"),
              why("kid_eval", "± jackknife s.e.; unbiased: compare runs with different n by KID"))
    t.add_row("FID (Inception)", num("fid_inception"), why("fid_inception", "pytorch-fid Inception-v3"))
    t.add_row("KID (Inception)", num("kid_inception", "kid_inception_se", ".3g"), why("kid_inception"))
    from mi_bench.prior_quality import describe as describe_prior, describe_diversity

    prior_row = describe_prior(rec["protocol"].get("prior_quality"))
    if prior_row is not None:  # the prior's own KID against held-out public images
        t.add_row("prior KID (eval feats)", *prior_row)
    prior_div = describe_diversity(rec["protocol"].get("prior_quality"))
    if prior_div is not None:  # a conditional prior's (PLG-MI) samples per class vs real images
        t.add_row("prior diversity", *prior_div)
    t.add_row("trained", ", ".join(rec["trained"]) or "nothing (all cached)", "")
    t.add_row("wall time", f"{rec['wall_seconds']:.1f}s",
              " ".join(f"{k}={v:.1f}s" for k, v in rec["stage_seconds"].items()))
    t.add_row("grid", str(rec.get("grid")), "")
    v = health.of(rec)
    n = len(health.problems(v))
    t.add_row("health", "ok" if v["ok"] else f"{n} problem{'s' * (n != 1)}",
              "target, evaluator and judges against chance and their thresholds (health.*)"
              + ("; warnings below" if n else ""))
    return t


def health_lines(rec: dict) -> list[str]:
    """The plain lines printed under a run's table: one ``warning:`` per health problem (what is
    wrong, what it means, the fix) and one ``note:`` per note (``mi_bench.health``)."""
    from mi_bench import health

    return health.lines(health.of(rec))


def rescore_table(rec: dict) -> Table:
    """Old and new numbers of one re-scored run."""
    m, how = rec["metrics"], rec["rescore"]
    old = how["from_metrics"]
    cfg = rec["config"]
    t = Table(title=f"run {rec['rescored_from']} re-scored as {rec['run_id']}: {cfg['attack']['name']} vs "
                    f"{rec['defense_label']} on {cfg['dataset']['name']} (preset {cfg['preset']}, seed {cfg['seed']})",
              caption=f"target acc {how['target_acc']}; grid {rec.get('grid')}")
    for col in ("metric", "before", "now"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    keys = ["target_acc", "eval_acc", "attack_acc",
            *[f"attack_acc_{j}" for j in (m.get("judges") or {}) if j != "eval"], "consensus_acc",
            "attack_acc_pixel_nn"]
    for k in keys:
        t.add_row(k, pct(old.get(k)), pct(m.get(k)))
    for j, res in (m.get("judges") or {}).items():
        t.add_row(f"{j} rejected", pct(how.get("from_rejected", {}).get(j)), pct(res["rejected"]))
    return t


def sweep_status_table(state, rows) -> tuple[Table, str]:
    """``mi_bench.sweep.status``'s rows as a table, and the counts line under it."""
    t = Table(title=f"sweep {state.sweep_id} ({state.folder})", title_justify="left")
    for col in ("status", "cell", "hash", "details"):
        t.add_column(col, overflow="fold")
    counts: dict[str, int] = {}
    for status, c, st in rows:
        counts[status] = counts.get(status, 0) + 1
        if status == "failed":
            details = f"{st.get('error')} (attempts {st.get('attempts', 1)}; log {st.get('log')})"
        elif status in ("running", "queued"):
            details = f"host {st.get('host', '?')} pid {st.get('pid', '?')} job {st.get('job_id')} log {st.get('log')}"
        elif status == "done":
            details = f"run {st.get('run_id', '(in database)')}"
        elif status == "interrupted":
            details = f"started {st.get('started_at')}, its process is gone; runs again next time"
        else:
            details = ""
        t.add_row(status, c.label, c.hash, details)
    return t, ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f" of {len(rows)} cells"


def dry_run_table(plan) -> tuple[Table, str]:
    """``mi_bench.sweep.dry_run``'s plan as a table, and the summary line under it."""
    t = Table(title=f"sweep {plan.state.sweep_id}: {len(plan.rows)} cells, in launch order", title_justify="left")
    for col in ("#", "status", "cell", "artifacts (trained by this cell, shared, cached)"):
        t.add_column(col, overflow="fold")
    for i, status, c, parts in plan.rows:
        cells = [f"[bold]{stage} {key} TRAIN[/]" if what == "TRAIN" else f"{stage} {key} {what}"
                 for stage, key, what in parts]
        t.add_row(str(i), status, c.label, "; ".join(cells))
    n = len(plan.rows)
    line = (f"{n - plan.runs} of {n} cells have records; {plan.runs} would run and train "
            f"{sum(plan.trained.values())} artifacts "
            f"({', '.join(f'{k_n} {k}' for k, k_n in sorted(plan.trained.items())) or 'none'})")
    return t, line


def registry_table(kind: str, registry) -> Table:
    """One registry's plugins (``mi-bench list``): name, one-line description, paper."""
    t = Table(title=f"{kind}s", title_justify="left")
    t.add_column("name", style="bold")
    t.add_column("description")
    t.add_column("paper")
    for name, obj in registry.items():
        t.add_row(name, getattr(obj, "summary", "") or (obj.__doc__ or "").strip().split("\n")[0],
                  getattr(obj, "paper", ""))
    return t
