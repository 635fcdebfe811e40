"""The leaderboard and its comparisons as text: Markdown, CSV, JSON, LaTeX and a plain HTML table.

:func:`render` prints :func:`mi_bench.results.leaderboard.leaderboard` entries (and, in Markdown,
the defense effects and baseline margins of ``mi_bench.results.effects``); the terminal table
(``mi_bench.results.terminal``) and the HTML report (``mi_bench.results.report``) use the same
columns and cells (:func:`columns`, :func:`table_rows`). The committed benchmark tables
(``results/bench/*.md``, ``*.csv``) are this module's output: ``tests/test_golden_tables.py``
renders each committed records file and compares.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from mi_bench.results.effects import calibration_attacks, design_label



def _pct_cell(v: float | None, ci: list[float] | None) -> str:
    s = f"{100 * v:.1f}"
    if ci and ci[0] is not None:
        s += f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"
    return s


def _cell(row: dict[str, Any], m: str, pct: bool) -> str:
    v = row.get(m)
    if v is None:
        if m in row.get("failed_metrics", []):
            return "failed"
        return "n/a" if m in row.get("absent_metrics", []) else "-"
    ci = row.get(m + "_ci")
    if pct:
        return _pct_cell(v, ci)
    fmt = ".3g" if m in SMALL_VALUED else ".2f"
    s = f"{v:{fmt}}"
    if ci and ci[0] is not None:
        s += f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"
    return s


SMALL_VALUED = ("kid_eval", "kid_inception", "lpips_nn")  # shown with 3 significant digits


def _human_cells(row: dict[str, Any], judges: list[str]) -> list[str]:
    h = row.get("human")
    if not h or not h["n_labelled"]:
        return ["-", "-"]
    fpr = ", ".join(f"{j} {100 * h['judges'][j]['fpr']:.0f}" for j in judges
                    if j in h["judges"] and h["judges"][j]["fpr"] is not None)
    return [f"{_pct_cell(h['acc'], h['acc_ci'])} (n={h['n_labelled']})", fpr or "-"]


def columns(rows: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """``(key, is_percentage (None = text), header)`` of the leaderboard table for ``rows``."""
    judges = []
    for r in rows:
        judges += [j for j in r.get("judges", []) if j != "eval" and j not in judges]
    cols: list[tuple[str, bool | None, str]] = [
        ("dataset", None, "dataset"), ("protocol", None, "protocol"), ("defense", None, "defense"),
        ("attack", None, "attack"), ("preset", None, "preset"), ("seeds", None, "seeds"),
        ("target_acc", True, "target acc %"), ("attack_acc", True, "attack acc % (eval)"),
        *[(f"attack_acc_{j}", True, f"{j} judge %") for j in judges],
        *([("consensus_acc", True, "consensus %")] if judges else []),
        ("attack_acc_top5", True, "top-5 %"), ("attack_acc_pixel_nn", True, "pixel-NN acc %"),
        ("knn_dist", False, "KNN dist"), ("lpips_nn", False, "LPIPS-NN"),
        ("fid_eval", False, "FID (E feats)"), ("kid_eval", False, "KID (E feats)"),
        ("fid_inception", False, "FID (Inception)"), ("kid_inception", False, "KID (Inception)"),
        ("collapsed_classes", False, "collapsed classes"), ("dp_epsilon", None, "DP ε spent"),
    ]
    if any(r.get("human") for r in rows):
        cols += [("human_acc", None, "human acc %"), ("human_fpr", None, "judge FPR vs human %")]
    return cols


def headers(rows: list[dict[str, Any]]) -> list[str]:
    return [h for _, _, h in columns(rows)]


PROTOCOL_NOTE = (
    "Accuracies in %, mean over seeds with its 95% interval in brackets (Student-t over 2+ seeds; "
    "one seed: the run's Wilson interval over its reconstructions). Attack acc: top-1 of the "
    "evaluation model over the whole domain (all 10 digits; for faces the private identities), "
    "of a different architecture and seed from the target (a 'none' class "
    "rejects blank/junk images) on every kept reconstruction. Other judges (mi_bench.judges): "
    "resnet = ResNet with crop/affine augmentation, robust = PGD-L2 adversarially trained; "
    "consensus = every judge names the attacked class. Pixel-NN acc (diagnostic): the nearest "
    "evaluator-training image in pixel space has the attacked class; far below attack acc means "
    "reconstructions fool the classifiers without looking like the class. KNN dist: squared L2 "
    "in evaluator features to the nearest private training image of the same class. LPIPS-NN: "
    "LPIPS to the nearest private training image of the same class (a perceptual judge of a "
    "different family). FID (E feats): Frechet distance on evaluator features vs private training "
    "images (not comparable with Inception FID); KID: unbiased kernel distance on the same "
    "features (0 = same distribution). Collapsed classes: classes whose reconstructions are near-copies "
    "(diversity below a quarter of real images'). Human acc: share labelled 'same class' by "
    "people (mi-bench label); judge FPR: share of reconstructions people called 'different' "
    "that the judge credited. Full protocol and configs in each record."
)


KID_NOTE = (
    "Reconstruction counts differ between rows of one dataset/protocol ({counts}): FID is biased "
    "by the number of images, so compare those rows by KID, not FID (rows flagged compare_by=kid)."
)


def protocol_note(rows: list[dict[str, Any]]) -> str:
    """The table's caption: the protocol, plus the KID note when sample counts differ."""
    flagged = sorted({n for r in rows if r.get("compare_by") == "kid" for n in r["n_reconstructions"]})
    return PROTOCOL_NOTE + (" " + KID_NOTE.format(counts=", ".join(map(str, flagged))) if flagged else "")


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    cols = columns(rows)
    judges = [k.removeprefix("attack_acc_") for k, _, _ in cols if k.startswith("attack_acc_")
              and k not in ("attack_acc_top5", "attack_acc_pixel_nn")]
    for r in rows:
        cells = []
        for key, pct, _ in cols:
            if key == "human_acc":
                cells.append(_human_cells(r, ["eval", *judges])[0])
            elif key == "human_fpr":
                cells.append(_human_cells(r, ["eval", *judges])[1])
            elif pct is None:
                v = r.get(key)
                if key == "seeds":
                    cells.append(",".join(map(str, v)))
                elif key == "defense" and r.get("variant"):
                    cells.append(f"{v} ({r['variant']})")
                elif key == "dp_epsilon":
                    cells.append("-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v)))
                else:
                    cells.append(str(v))
            elif key == "collapsed_classes" and r.get(key) is not None:
                cells.append(f"{r[key]:.1f}" if len(r["seeds"]) > 1 else str(int(r[key])))
            else:
                cells.append(_cell(r, key, pct))
        out.append(cells)
    return out


EFFECTS_NOTE = (
    "Change in attack accuracy (percentage points, defended minus undefended; negative = the "
    "defense lowers it) with its 95% interval. Design: *paired by target seed* where the two "
    "entries ran the same target seeds (two or more; the same seed trains both targets and the "
    "prior and starts the inversion): the mean of the per-seed differences with its Student-t "
    "interval; otherwise *Welch, unpaired*: the difference of means with Welch's interval "
    "(unequal variances). Published baseline: `none` trained with its own recipe. Matched baseline: `none` trained "
    "with the defense's recipe (identical `target` section: optimiser, lr, schedule, epochs, "
    "batch, sampler, drop-last), e.g. `defense=none recipe=bido`. Verdict: *holds* = the "
    "interval lies below 0 against both; *vanishes vs matched* = below 0 against the published "
    "baseline only, so the recipe, not the defense, explains the drop; *raises vs matched* = above "
    "0 against the matched baseline: the defended target leaks more. MDE (after *no effect* and "
    "*vanishes vs matched*): the smallest change, either way, that the comparison with the matched "
    "baseline detects with 80% power at the 5% level (two-sided t test, from the spread of these "
    "seeds; `mi_bench.stats.min_detectable_effect`): the verdict rules out effects of about that "
    "size, not smaller ones; results/bench/power.md says how many seeds a 10- or 20-point change "
    "needs."
)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _delta(c: dict[str, Any] | None) -> str:
    if not c or c.get("delta") is None:
        return "-"
    s = f"{100 * c['delta']:+.1f}"
    if c["delta_ci"]:
        s += f" [{100 * c['delta_ci'][0]:+.1f}, {100 * c['delta_ci'][1]:+.1f}]"
    return s


def effects_rows(effects: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the defense-effect table (the verdicts ``vanishes vs matched`` and ``raises vs matched`` in bold)."""
    headers = ["dataset", "protocol", "attack", "preset", "defense", "seeds", "attack acc %",
               "published baseline", "Δ vs published (pp)", "matched baseline",
               "Δ vs matched (pp)", "design", "verdict"]
    body = []
    for r in effects:
        pub_d, mat_d = design_label(r.get("published")), design_label(r.get("matched"))
        design = mat_d if (r["matched_is_published"] or pub_d == mat_d or r.get("published") is None) \
            else f"published: {pub_d}; matched: {mat_d}"
        def base(kind: str) -> str:
            b = r.get(kind)
            if b is None:
                return "none found"
            same = " (= published)" if kind == "matched" and r["matched_is_published"] else ""
            return f"{b['defense']}{same}: {_pct(b['value'])} (seeds {','.join(map(str, b['seeds']))})"
        verdict = r["verdict"]
        cell = f"**{verdict}**" if verdict in ("vanishes vs matched", "raises vs matched") else verdict
        mde = (r.get("matched") or {}).get("mde")
        if verdict in ("no effect", "vanishes vs matched") and mde is not None:
            cell += f" (MDE {100 * mde:.1f} pp)"
        body.append([r["dataset"], r["protocol"], r["attack"], r["preset"], r["defense"],
                     ",".join(map(str, r["seeds"])), _pct(r["value"]), base("published"),
                     _delta(r.get("published")), base("matched"), _delta(r.get("matched")),
                     design, cell])
    return headers, body


def render_effects(effects: list[dict[str, Any]], rows: list[dict[str, Any]] | None = None,
                   notes: HealthNotes | None = None) -> str:
    """The output of :func:`defense_effects` as a markdown table with its note; given the
    leaderboard ``rows`` and their ``notes``, cells of entries with a health problem are marked."""
    head, body = effects_rows(effects)
    marks = ""
    if rows is not None and notes is not None:
        known = len(notes.items)
        body = health_marked_effects(effects, head, body, rows, notes)
        marks = md_footnotes(notes, known)
    return "\n".join(md_table(head, body)) + "\n" + marks + f"\n{EFFECTS_NOTE}\n"


def margin_rows(margins: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the baseline-margin table (points, 95% interval)."""
    judges: list[str] = []
    for e in margins:
        judges += [j for j in e["judges"] if j not in judges]
    baselines = calibration_attacks()
    head = ["dataset", "protocol", "defense", "attack", "preset", "seeds",
            *[f"vs {b}: {j}" for b in baselines for j in judges], "flag"]
    body = []
    for e in margins:
        cells = [e["dataset"], e["protocol"], e["defense"], e["attack"], e["preset"],
                 ",".join(map(str, e["seeds"]))]
        for b in baselines:
            for j in judges:
                m = e["margins"].get(b, {}).get(j)
                cells.append("-" if m is None else
                             f"{100 * m['margin']:+.0f} [{100 * m['ci'][0]:+.0f}, {100 * m['ci'][1]:+.0f}]")
        cells.append(e["flag"] or "-")
        body.append(cells)
    return head, body


MARGIN_NOTE = (
    "Margin = attack accuracy minus the calibration baseline's under each judge, in points, on "
    "the same targets (seeds matched), 95% interval in brackets. random: best of N samples of "
    "GMI's public prior by target logit; pixel: gradient inversion in pixel space from random "
    "public images with GMI's iteration budget. Flagged: no margin over pixel beyond the "
    "interval under the robust judge."
)


def md_table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(c) + " |" for c in body]


HEALTH_MARK = "⚠"  # after a number computed with a classifier that failed its health check
HEALTH_NOTE = ("⚠ = computed with a target, evaluator or judge below its health thresholds (test "
               "accuracy, multiple of chance, rejected real images; config keys health.*, "
               "mi_bench.health): read that number with care.")
UNSHOWN = ("-", "n/a", "failed")  # cells without a number carry no mark


class HealthNotes:
    """The reasons of marked cells, numbered in order of first use (``⚠1``, ``⚠1,2``)."""

    def __init__(self) -> None:
        self.items: dict[str, int] = {}

    def mark(self, reasons: list[str] | None, cell: str = "") -> str:
        """The suffix for a cell (`` ⚠1,2``); empty when there is no reason or no number."""
        if not reasons or cell in UNSHOWN:
            return ""
        return f" {HEALTH_MARK}" + ",".join(str(self.items.setdefault(w, len(self.items) + 1)) for w in reasons)

    def lines(self, start: int = 0) -> list[str]:
        """``⚠1 reason`` for every reason numbered after the first ``start``."""
        return [f"{HEALTH_MARK}{n} {w}" for w, n in self.items.items() if n > start]


def md_footnotes(notes: HealthNotes, start: int = 0) -> str:
    """The reasons numbered after ``start``, as a Markdown list with the marks' note ('' = none)."""
    new = notes.lines(start)
    return "\n" + "\n".join(f"- {line}" for line in new) + f"\n\n{HEALTH_NOTE}\n" if new else ""


def health_marked(rows: list[dict[str, Any]], body: list[list[str]], notes: HealthNotes) -> list[list[str]]:
    """:func:`table_rows` cells with the health marks of each row (``row["health"]``)."""
    cols = columns(rows)
    return [[c + notes.mark((r.get("health") or {}).get(k), c) for (k, _, _), c in zip(cols, cells)]
            for r, cells in zip(rows, body)]


def _entry_health(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, list[str]]]:
    return {(r["dataset"], r["protocol"], r["defense"], r["attack"], r["preset"]): r.get("health") or {}
            for r in rows}


def health_marked_effects(effects: list[dict[str, Any]], head: list[str], body: list[list[str]],
                          rows: list[dict[str, Any]], notes: HealthNotes) -> list[list[str]]:
    """Defense-effect cells (eval attack accuracy and its changes) of entries whose eval judge
    failed its health check, marked."""
    marks = _entry_health(rows)
    cols = [i for i, h in enumerate(head) if h in ("attack acc %", "Δ vs published (pp)", "Δ vs matched (pp)")]
    out = []
    for e, cells in zip(effects, body):
        why = marks.get((e["dataset"], e["protocol"], e["defense"], e["attack"], e["preset"]), {}).get("attack_acc")
        out.append([c + notes.mark(why, c) if i in cols else c for i, c in enumerate(cells)])
    return out


def health_marked_margins(margins: list[dict[str, Any]], head: list[str], body: list[list[str]],
                          rows: list[dict[str, Any]], notes: HealthNotes) -> list[list[str]]:
    """Margin cells (``vs <baseline>: <judge>``) under a judge that failed its health check, marked."""
    marks = _entry_health(rows)
    out = []
    for e, cells in zip(margins, body):
        m = marks.get((e["dataset"], e["protocol"], e["defense"], e["attack"], e["preset"]), {})
        new = []
        for h, c in zip(head, cells):
            judge = h.split(": ", 1)[1] if h.startswith("vs ") and ": " in h else None
            key = None if judge is None else ("attack_acc" if judge == "eval" else f"attack_acc_{judge}")
            new.append(c + notes.mark(m.get(key), c) if key else c)
        out.append(new)
    return out


def render(rows: list[dict[str, Any]], fmt: str, margins: list[dict[str, Any]] | None = None,
           effects: list[dict[str, Any]] | None = None) -> str:
    """``rows`` (:func:`leaderboard`) as json/csv/markdown/latex/html; the markdown output also
    renders ``margins`` (:func:`baseline_margins`) and ``effects`` (:func:`defense_effects`)."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    cols = columns(rows)
    head = [h for _, _, h in cols]
    body = table_rows(rows)
    note = protocol_note(rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        flat = [k for k, _, _ in cols if k not in ("human_acc", "human_fpr")]
        stats = [k for k, p, _ in cols if p is not None]
        w.writerow(flat + [k + "_ci_low" for k in stats] + [k + "_ci_high" for k in stats]
                   + ["n_reconstructions", "compare_by", "health"])
        for r in rows:
            ci = [r.get(k + "_ci") or [None, None] for k in stats]
            w.writerow([",".join(map(str, r[c])) if c == "seeds" else r.get(c) for c in flat]
                       + [c[0] for c in ci] + [c[1] for c in ci]
                       + [",".join(map(str, r.get("n_reconstructions", []))), r.get("compare_by"),
                          "; ".join(dict.fromkeys(w for ws in (r.get("health") or {}).values() for w in ws))])
        return buf.getvalue()
    notes = HealthNotes()
    body = health_marked(rows, body, notes)

    if fmt == "markdown":
        lines = md_table(head, body)
        text = "\n".join(lines) + "\n" + md_footnotes(notes) + f"\n{note}\n"
        if effects:
            text += "\n## Defense effect vs baselines\n\n" + render_effects(effects, rows, notes)
        if margins:
            mh, mb = margin_rows(margins)
            known = len(notes.items)
            mb = health_marked_margins(margins, mh, mb, rows, notes)
            text += ("\n## Margins over calibration baselines\n\n" + "\n".join(md_table(mh, mb)) + "\n"
                     + md_footnotes(notes, known) + f"\n{MARGIN_NOTE}\n")
        return text
    if fmt == "latex":
        esc = lambda s: (s.replace("%", r"\%").replace("_", r"\_").replace("±", r"$\pm$")  # noqa: E731
                         .replace(HEALTH_MARK, r"$^\dagger$"))  # pdflatex has no ⚠
        lines = [r"\begin{tabular}{" + "l" * 6 + "r" * (len(head) - 6) + "}", r"\toprule",
                 " & ".join(esc(h) for h in head) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in cells) + r" \\" for cells in body]
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines += [r"\par\noindent " + esc(line) for line in notes.lines()]
        return "\n".join(lines) + "\n"
    if fmt == "html":
        th = "".join(f"<th>{h}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for cells in body)
        health = "".join(f"<p>{line}</p>" for line in notes.lines())
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>\n{health}<p>{note}</p>\n"
    raise ValueError(f"unknown format {fmt!r}")
