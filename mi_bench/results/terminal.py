"""The leaderboard in a terminal (``mi-bench leaderboard``): readable at 80 columns.

Rows are grouped under one heading per dataset / protocol / attack / preset instead of
repeating those columns. Each table starts with the columns that matter - the defense and its
strength, target accuracy, attack accuracy with its 95% interval and, once judges exist, their
consensus - and adds the others in a fixed order of priority while the table still fits the
console: a column is added only if every one of its cells fits uncut (widths are computed here,
not left to rich, which would shrink columns and cut numbers). ``wide`` shows every column and
the full seed list; the console is then as wide as the table needs. A number is never cut: when
even the first columns do not fit, the returned width is larger than the console's and the
caller prints at that width (the terminal wraps the lines).

Cells: ``seeds`` is the number of seeds (with ``wide``: ``3 (0,1,2)``); ``n/a`` is a metric absent by
design and ``failed`` a metric whose computation failed, each with a footnote marker giving the
reason (listed under the tables); ``-`` is a metric that does not exist for the row; ``⚠`` after
a number: it was computed with a target, evaluator or judge that failed its health check
(``mi_bench.health``), the reason in the footnote of that number.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from mi_bench.results.leaderboard import section_title, sections
from mi_bench.results.render import columns, protocol_note, table_rows

# terminal headers (the markdown/HTML ones are longer); unknown keys keep their long header
SHORT = {
    "target_acc": "target %", "attack_acc": "attack % (eval)", "consensus_acc": "consensus %",
    "attack_acc_top5": "top-5 %", "attack_acc_pixel_nn": "pixel-NN %", "knn_dist": "KNN dist",
    "lpips_nn": "LPIPS-NN", "fid_eval": "FID (E)", "kid_eval": "KID (E)",
    "fid_inception": "FID (Inc.)", "kid_inception": "KID (Inc.)", "collapsed_classes": "collapsed",
    "dp_epsilon": "DP ε", "human_acc": "human %", "human_fpr": "judge FPR vs human %",
}
FIRST = ("defense", "target_acc", "attack_acc", "consensus_acc")  # always shown
# the others, most useful first; judges' own accuracies come right after ``seeds``
LATER = ("seeds", "<judges>", "human_acc", "human_fpr", "attack_acc_pixel_nn", "knn_dist",
         "fid_eval", "kid_eval", "lpips_nn", "collapsed_classes", "attack_acc_top5", "dp_epsilon",
         "fid_inception", "kid_inception")
NOT_SHOWN = ("dataset", "protocol", "attack", "preset")  # the section heading says them
SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


@dataclass
class Footnotes:
    """Reasons of ``n/a`` and ``failed`` cells, numbered in order of first use."""

    notes: dict[tuple[str, str], int] = field(default_factory=dict)
    where: dict[int, list[str]] = field(default_factory=dict)

    def mark(self, kind: str, reason: str, header: str) -> str:
        n = self.notes.setdefault((kind, reason), len(self.notes) + 1)
        cols = self.where.setdefault(n, [])
        if header not in cols:
            cols.append(header)
        return str(n).translate(SUPERSCRIPT)

    def lines(self) -> list[str]:
        out = []
        for (kind, reason), n in self.notes.items():
            what = {"n/a": "n/a (absent by design)", "health": "health warning"}.get(kind, "failed")
            out.append(f"{str(n).translate(SUPERSCRIPT)} {what}, {', '.join(self.where[n])}: {reason}")
        return out


@dataclass
class _Col:
    key: str
    header: str
    cells: list[str]
    wrap: bool = False  # text that may wrap at spaces (the defense label); the others never do
    why: list[tuple[str, str] | None] = field(default_factory=list)  # per cell: (n/a|failed, reason)

    @property
    def natural(self) -> int:
        return max([cell_len(c) for c in self.cells] + [self.min_header])

    @property
    def min_header(self) -> int:
        return max(cell_len(w) for w in self.header.split())

    @property
    def minimum(self) -> int:
        if not self.wrap:
            return self.natural
        words = [w for c in self.cells for w in c.split()]
        return max([cell_len(w) for w in words] + [self.min_header])

    @property
    def empty(self) -> bool:
        """No row has a value: every cell is ``-``, ``n/a`` or ``failed``."""
        return self.key not in FIRST and all(c == "-" or (w and w[0] != "health")
                                             for c, w in zip(self.cells, self.why))

    def marked(self, notes: Footnotes) -> _Col:
        """A copy whose ``n/a`` and ``failed`` cells carry their footnote markers, and numbers
        computed with a classifier that failed its health check ``⚠`` and theirs."""
        cells = [c + " ⚠" + ",".join(notes.mark("health", r, self.header) for r in w[1]) if w and w[0] == "health"
                 else c + notes.mark(w[0], w[1], self.header) if w else c for c, w in zip(self.cells, self.why)]
        return _Col(self.key, self.header, cells, self.wrap, self.why)


def _defense_text(label: str, wide: bool) -> str:
    """``bido[lambda_x=0.05,lambda_y=0.5]`` -> ``bido lambda_x=0.05 lambda_y=0.5``: breaks
    between the strength fields, never inside one."""
    if wide or "[" not in label:
        return label
    name, _, params = label.partition("[")
    return " ".join([name, *params.rstrip("]").split(",")])


def _section_columns(rows: list[dict[str, Any]], wide: bool) -> list[_Col]:
    cols = columns(rows)
    body = table_rows(rows)
    out = []
    for i, (key, _, header) in enumerate(cols):
        if key in NOT_SHOWN:
            continue
        head = SHORT.get(key, header)
        if key == "seeds" and wide:
            head = "seeds: n (list)"
        if key.startswith("attack_acc_") and key not in SHORT:
            head = f"{key.removeprefix('attack_acc_')} judge %"
        cells, why = [], []
        for r, line in zip(rows, body):
            c, w = line[i], None
            if key == "seeds":
                c = f"{len(r['seeds'])} ({c})" if wide else str(len(r["seeds"]))
            elif key == "defense":
                c = _defense_text(r["defense"], wide) + (f" ({r['variant']})" if r.get("variant") else "")
            elif c == "n/a" and key in r.get("absent_reasons", {}):
                w = ("n/a", r["absent_reasons"][key])
            elif c == "failed" and key in r.get("failed_reasons", {}):
                w = ("failed", r["failed_reasons"][key])
            elif c not in ("-", "n/a", "failed") and (r.get("health") or {}).get(key):
                w = ("health", tuple(r["health"][key]))  # mi_bench.health: the reasons
            cells.append(c)
            why.append(w)
        out.append(_Col(key, head, cells, wrap=key == "defense", why=why))
    return out


def _rank(key: str) -> int:
    """Priority of a column: FIRST, then LATER (other judges at ``<judges>``), anything else last."""
    order = [*FIRST, *LATER]
    if key in order:
        return order.index(key)
    if key.startswith("attack_acc_"):
        return order.index("<judges>")
    return len(order)


def _table(title: str, cols: list[_Col], widths: list[int]) -> Table:
    t = Table(title=Text(title), title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
              show_edge=False, pad_edge=False, padding=(0, 1))
    for c, w in zip(cols, widths):
        # headers wrap at spaces; a number cell is never wider than its column (width >= cell)
        t.add_column(Text(c.header), width=w, overflow="fold",
                     justify="left" if c.wrap else "right")
    for i in range(len(cols[0].cells)):
        t.add_row(*[Text(c.cells[i]) for c in cols])  # text, not markup: labels hold brackets
    return t


def _width(console: Console, table: Table) -> int:
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def _fit(cols: list[_Col], width: int, probe: Console) -> tuple[list[_Col], list[int], list[str]]:
    """The FIRST columns, then each other column in order of priority if the table still fits
    ``width`` with every cell uncut; the room left goes to the wrapping (defense) column, then
    to headers that would wrap.
    Returns the columns, their widths and the headers left out."""
    chosen = [c for c in cols if c.key in FIRST]
    left_out = []
    for c in sorted((c for c in cols if c.key not in FIRST), key=lambda c: _rank(c.key)):
        trial = [x for x in cols if x in chosen or x is c]
        if _width(probe, _table("", trial, [x.minimum for x in trial])) <= width:
            chosen = trial
        else:
            left_out.append(c.header)
    widths = [c.minimum for c in chosen]
    room = width - _width(probe, _table("", chosen, widths))
    # room left: the defense label on one line first, then headers on one line, left to right
    wanted = [c.natural if c.wrap else 0 for c in chosen], [cell_len(c.header) for c in chosen]
    for want in wanted:
        for i in range(len(chosen)):
            extra = max(0, min(room, want[i] - widths[i]))
            widths[i] += extra
            room -= extra
    return chosen, widths, left_out


def _missing_line(cols: list[_Col], notes: Footnotes) -> Text | None:
    """``In every row: FID (Inc.) n/a¹, KID (Inc.) n/a¹`` for the columns without a value
    (the narrow layout leaves them out)."""
    parts = []
    for c in cols:
        marked = c.marked(notes)
        kinds = sorted({marked.cells[i] for i, w in enumerate(c.why) if w and w[0] != "health"})
        if kinds:
            parts.append(f"{c.header} {' / '.join(kinds)}")
    return Text("In every row: " + ", ".join(parts), style="dim") if parts else None


def board(rows: list[dict[str, Any]], *, width: int, wide: bool = False,
          note: bool = True) -> tuple[list[RenderableType], int]:
    """The leaderboard as rich renderables (a table per section, the columns left out, the
    footnotes, the protocol note) for a console ``width`` columns wide, and the width they need:
    more than ``width`` only with ``wide`` or when the FIRST columns alone do not fit."""
    probe = Console(width=10_000, file=io.StringIO())  # measures only
    notes = Footnotes()
    parts: list[RenderableType] = []
    need = 0
    left_out: list[str] = []
    for key, sec in sections(rows).items():
        cols = _section_columns(sec, wide)
        missing = None
        if wide:
            cols = [c.marked(notes) for c in cols]
            widths = [max(c.natural, cell_len(c.header)) for c in cols]  # headers on one line too
        else:
            missing = [c for c in cols if c.empty]
            cols = sorted((c for c in cols if not c.empty), key=lambda c: _rank(c.key))
            # choose with every column's footnotes numbered (numbers at least as long as the
            # final ones), then number only the cells shown
            trial = copy.deepcopy(notes)
            chosen, _, out = _fit([c.marked(trial) for c in cols], width, probe)
            keys = [c.key for c in chosen]
            cols, widths, out2 = _fit([c.marked(notes) for c in cols if c.key in keys], width, probe)
            left_out += [h for h in out + out2 if h not in left_out]
        table = _table(section_title(key), cols, widths)
        need = max(need, _width(probe, table))
        parts += [Text(""), table]
        line = _missing_line(missing, notes) if missing else None
        if line is not None:
            parts.append(line)
    if not rows:
        parts.append(Text("No leaderboard entries: nothing recorded yet, or nothing matches the filters."))
    if left_out:
        parts.append(Text(f"Left out at {width} columns: {', '.join(left_out)} (a wider terminal "
                          "shows more; --wide shows every column and the seed lists).", style="dim"))
    if notes.notes:
        parts.append(Text("\n".join(notes.lines())))
    if note:
        parts.append(Text(protocol_note(rows), style="dim"))
    return parts, max(need, 0 if wide else width)
