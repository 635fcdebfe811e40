"""``mi-bench report -o report.html``: the results as one self-contained HTML file.

Everything is inside the file - images as ``data:`` URIs, the style sheet and a few lines of
script inline - so it can be mailed, attached to a paper's supplement or opened offline; the
file holds no ``http://`` or ``https://`` text at all (a URL quoted in a reason is written with
its colon as ``&#58;``, which displays the same). Per dataset / protocol / attack / preset:

* the leaderboard (:func:`mi_bench.results.leaderboard`), sortable by clicking a header (missing
  values sort last); ``n/a`` and ``failed`` cells carry a footnote with the reason, and a number
  computed with a target, evaluator or judge that failed its health check (``mi_bench.health``)
  a ``⚠`` and a footnote saying why;
* the target-accuracy versus attack-accuracy plot with 95% intervals and the Pareto front
  (:func:`mi_bench.viz.tradeoff_png`);
* the priors of the section's runs: each one's KID against held-out public images and its sample
  grid (``protocol.prior_quality``, :mod:`mi_bench.prior_quality`);
* a gallery per defense (:mod:`mi_bench.results.gallery`): real private training images beside
  each run's saved reconstructions, framed by the judges' verdicts;
* each run's full protocol and config, one click away (``<details>``; the leaderboard's run
  links open it; the ``protocol`` part, the same for most runs, is stored once and copied in
  by the page's script, see :class:`Protocols`);
* each defense's effect against its published and matched baselines and each attack's margin
  over the calibration baselines, where the records allow them.

Size: galleries are capped (``ReportOptions``: classes, samples and real images per class,
thumbnail side), grids are re-encoded with a 64-colour palette.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path
from typing import Any

from mi_bench.results.gallery import COLOURS, Gallery, RealImages, ReportOptions, esc
from mi_bench.results.leaderboard import missing_metrics, section_title, sections
from mi_bench.results.render import (
    EFFECTS_NOTE, MARGIN_NOTE, HealthNotes, columns, effects_rows, health_marked_effects,
    health_marked_margins, margin_rows, protocol_note, table_rows,
)

log = logging.getLogger(__name__)

HIDDEN = ("dataset", "protocol", "attack", "preset")  # the section heading says them


# -- text ------------------------------------------------------------------------------------

def _pretty(obj: Any, indent: int = 0) -> str:
    """JSON with nested objects indented and short lists of scalars on one line."""
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        inner = [f'{pad} {json.dumps(str(k))}: {_pretty(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(inner) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return json.dumps(list(obj), default=str)
        return "[\n" + ",\n".join(f"{pad} {_pretty(v, indent + 1)}" for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, default=str)


# -- page pieces -----------------------------------------------------------------------------

def _slug(*parts: str) -> str:
    return "-".join("".join(ch if ch.isalnum() else "_" for ch in p) for p in parts)


def _sort_value(row: dict[str, Any], key: str) -> str | None:
    """``data-v`` of a cell: the number it sorts by ('' = missing, sorts last), None = text."""
    if key in ("defense",):
        return None
    if key == "seeds":
        return str(len(row["seeds"]))
    if key == "human_acc":
        h = row.get("human")
        return "" if not h or h.get("acc") is None else repr(h["acc"])
    if key == "human_fpr":
        return None
    v = row.get(key)
    return "" if v is None or isinstance(v, str) else repr(float(v))


class _Notes:
    """Footnotes of one section's table (n/a and failed reasons)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.items: dict[tuple[str, str], int] = {}

    def ref(self, kind: str, reason: str) -> str:
        n = self.items.setdefault((kind, reason), len(self.items) + 1)
        return f'<sup><a href="#{self.prefix}-n{n}" title="{esc(reason)}">{n}</a></sup>'

    def health(self, reasons: list[str]) -> str:
        """`` ⚠¹²``: the mark of a number computed with a classifier that failed its health check
        (``mi_bench.health``), one footnote per reason."""
        refs = "".join(self.ref("health", r) for r in reasons)
        return f' <span class="warn" title="{esc("; ".join(reasons))}">⚠</span>{refs}'

    def html(self) -> str:
        if not self.items:
            return ""
        what = {"n/a": "n/a (absent by design)", "health": "⚠ health warning"}
        lis = "".join(f'<li id="{self.prefix}-n{n}"><b>{what.get(k, "failed")}</b>: '
                      f"{esc(r)}</li>" for (k, r), n in self.items.items())
        return f'<ol class="notes">{lis}</ol>'


def leaderboard_table(rows: list[dict[str, Any]], slug: str) -> str:
    """A section's leaderboard as a sortable table with its footnotes."""
    cols = [(i, k, "seeds: n (list)" if k == "seeds" else h) for i, (k, _, h) in enumerate(columns(rows))
            if k not in HIDDEN]
    body = table_rows(rows)
    notes = _Notes(slug)
    text_cols = {k for _, k, _ in cols if _sort_value(rows[0], k) is None}
    txt = ' class="txt"'
    head = "".join(f'<th title="click to sort"{txt if k in text_cols else ""}>{esc(h)}</th>'
                   for _, k, h in cols) + f"<th{txt}>runs</th>"
    trs = []
    for r, cells in zip(rows, body):
        tds = []
        for i, k, _ in cols:
            text = f"{len(r['seeds'])} ({cells[i]})" if k == "seeds" else cells[i]
            inner = esc(text)
            if text == "n/a" and k in r.get("absent_reasons", {}):
                inner += notes.ref("n/a", r["absent_reasons"][k])
            elif text == "failed" and k in r.get("failed_reasons", {}):
                inner += notes.ref("failed", r["failed_reasons"][k])
            elif text not in ("-", "n/a", "failed") and (r.get("health") or {}).get(k):
                inner += notes.health(r["health"][k])
            v = _sort_value(r, k)
            attr = "" if v is None else f' data-v="{v}"'
            cls = ' class="txt"' if v is None else ""
            tds.append(f"<td{attr}{cls}>{inner}</td>")
        seeds = dict(zip(r.get("run_ids", []), r["seeds"]))
        links = " ".join(f'<a class="run" href="#run-{esc(rid)}">seed {esc(s)}</a>' for rid, s in seeds.items())
        tds.append(f'<td class="txt">{links}</td>')
        trs.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="scroll"><table class="board sortable" id="{slug}-board"><thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(trs)}</tbody></table></div>{notes.html()}")


def _figure(rows: list[dict[str, Any]], title: str) -> str:
    from mi_bench.viz import tradeoff_png

    if not any(r.get("target_acc") is not None and r.get("attack_acc") is not None for r in rows):
        return '<p class="note">No entry has both accuracies: no plot.</p>'
    uri = "data:image/png;base64," + base64.b64encode(tradeoff_png(rows, title)).decode()
    return (f'<figure><img class="plot" src="{uri}" alt="target accuracy versus attack accuracy: {esc(title)}">'
            "<figcaption>Target test accuracy against attack accuracy (eval judge), 95% intervals "
            "(Student-t over seeds; one seed: Wilson over reconstructions for the attack, none for "
            "the target). Dashed line and rings: the Pareto front (no other entry is both more "
            "private and more accurate). Labels: defense strengths.</figcaption></figure>")


class Protocols:
    """Each run's full protocol and config behind a ``<details>``. The run-specific part (config,
    artifacts, versions, ...) is written in the run's block; its ``protocol`` - long and the same
    for most runs - is written once per distinct value at the end of the page, and the page's
    script copies it into the run's block when it opens (without script, a link leads to it)."""

    def __init__(self) -> None:
        self.shared: dict[str, tuple[str, list[str]]] = {}  # protocol JSON -> (id, run ids)

    def details(self, rec: dict[str, Any]) -> str:
        text = _pretty(rec.get("protocol", {}))
        pid, runs = self.shared.setdefault(text, (f"protocol-{len(self.shared) + 1}", []))
        runs.append(rec["run_id"])
        keep = {k: rec[k] for k in ("run_id", "created_at", "seed", "defense_label", "config", "artifacts",
                                    "trained", "versions", "machine", "wall_seconds") if k in rec}
        rid = esc(rec["run_id"])
        return (f'<details class="protocol" id="run-{rid}"><summary>run {rid} (seed '
                f'{esc(rec["config"]["seed"])}): full protocol and config</summary>'
                f'<p class="note">"protocol" (<a href="#{pid}">{pid}</a>):</p>'
                f'<pre class="shared" data-ref="{pid}"></pre><p class="note">record:</p>'
                f"<pre>{esc(_pretty(keep), quote=False)}</pre></details>")

    def html(self) -> str:
        if not self.shared:
            return ""
        blocks = "".join(
            f'<details class="protocol" id="{pid}"><summary>{pid}: the protocol of {len(runs)} run(s) '
            f"({esc(', '.join(runs[:6]))}{', ...' if len(runs) > 6 else ''})</summary>"
            f"<pre>{esc(text, quote=False)}</pre></details>" for text, (pid, runs) in self.shared.items())
        return f'<section id="protocols"><h2>Protocols</h2>{blocks}</section>'


def _md_table_html(head: list[str], body: list[list[str]]) -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f'<td class="txt">{esc(c.replace("**", ""))}</td>' for c in cells) + "</tr>"
                  for cells in body)
    return (f'<div class="scroll"><table class="board sortable"><thead><tr>{th}</tr></thead>'
            f"<tbody>{trs}</tbody></table></div>")


def _health_html(notes: HealthNotes) -> str:
    """The reasons of a table's ``⚠`` marks (``mi_bench.health``), one note line each."""
    return "".join(f'<p class="note"><span class="warn">{esc(line[0])}</span>{esc(line[1:])}</p>'
                   for line in notes.lines())


def _effects_html(effects: list[dict[str, Any]], rows: list[dict[str, Any]] | None = None) -> str:
    head, body = effects_rows(effects)
    notes = HealthNotes()
    if rows is not None:  # the eval judge's numbers of entries whose evaluator failed its health check
        body = health_marked_effects(effects, head, body, rows, notes)
    keep = [i for i, h in enumerate(head) if h not in HIDDEN]
    return (_md_table_html([head[i] for i in keep], [[c[i] for i in keep] for c in body]) + _health_html(notes)
            + f'<p class="note">{esc(EFFECTS_NOTE.replace("`", "").replace("*", ""))}</p>')


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:0 18px 40px;color:#1d1d1f}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:2px solid #ddd;padding-bottom:3px}
h3{font-size:15px;margin:18px 0 6px}h4{font-size:14px;margin:0 0 2px;font-family:ui-monospace,monospace}
.note,.legend,.meta,figcaption{color:#555;font-size:12.5px;max-width:1100px}.meta{margin:0 0 6px}
nav ul{columns:2;font-size:13px}details.how summary{cursor:pointer;font-size:13px;color:#333}
table.board{border-collapse:collapse;font-size:12.5px;margin:6px 0}
table.board th,table.board td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}
table.board td.txt,table.board th.txt{text-align:left}table.board th{background:#f3f3f5;cursor:pointer;user-select:none}
table.board th[aria-sort=ascending]::after{content:" \\25B2"}table.board th[aria-sort=descending]::after{content:" \\25BC"}
table.board tbody tr:nth-child(even){background:#fafafa}
ol.notes{font-size:12px;color:#555;word-break:break-all}span.warn{color:#b45309;font-weight:bold}
figure{margin:10px 0}img.plot{max-width:100%;border:1px solid #eee}
.scroll{overflow-x:auto;max-width:100%}
.gallery{display:flex;flex-wrap:wrap;gap:14px}.card{border:1px solid #ddd;border-radius:6px;padding:8px 10px;background:#fff}
.card .legend{display:none}table.imgs{border-collapse:collapse}table.imgs th{font-weight:normal;font-size:11.5px;text-align:right;padding-right:6px;color:#444}
table.imgs td{padding:2px 4px;vertical-align:top}td.reals{border-right:2px solid #bbb}
span.real,span.recon img{width:48px;height:48px;image-rendering:pixelated;display:block}
span.real{display:inline-block;margin:3px 2px;border:3px solid transparent;background-size:100% 100%}
span.recon{display:inline-block;border:3px solid;margin:0 2px;vertical-align:top}
span.dots{display:flex;gap:2px;justify-content:center;padding:1px 0;background:#fff}span.dots i{width:7px;height:7px;border-radius:50%;display:block}
.f-ok{border-color:@ok@}.f-some{border-color:@some@}.f-no{border-color:@no@}.f-none{border-color:@rej@}
.d-ok{background:@ok@}.d-no{background:@no@}.d-rej{background:@rej@}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;vertical-align:-1px}
img.grid{max-width:100%;display:block}
details.protocol{margin-top:4px;font-size:12px}pre.shared:empty{display:none}details.protocol pre{max-height:420px;overflow:auto;background:#f6f6f8;padding:6px;font-size:11px}
details.protocol:target,details.protocol[open]{outline:2px solid #9cc3ff}
"""

def _css() -> str:
    out = CSS
    for k, colour in COLOURS.items():
        out = out.replace(f"@{k}@", colour)
    return out


JS = """
(function () {
  function key(td) {
    var v = td.getAttribute("data-v");
    if (v === null) { return td.textContent.trim().toLowerCase(); }
    return v === "" ? null : parseFloat(v);
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener("click", function () {
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === null || y === null) { return (x === null) - (y === null); }
          return (x < y ? -1 : (x > y ? 1 : 0)) * dir;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  function fill(details) {  // a run's protocol, copied from the one shared block that holds it
    Array.prototype.forEach.call(details.querySelectorAll("pre.shared"), function (pre) {
      var src = document.getElementById(pre.getAttribute("data-ref"));
      if (!pre.textContent && src) { pre.textContent = src.querySelector("pre").textContent; }
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("details.protocol"), function (d) {
    d.addEventListener("toggle", function () { if (d.open) { fill(d); } });
  });
  function openTarget() {
    var id = decodeURIComponent(window.location.hash.slice(1));
    var el = id ? document.getElementById(id) : null;
    if (el && el.tagName === "DETAILS") { el.open = true; fill(el); el.scrollIntoView(); }
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();
})();
"""


def _priors_html(rows: list[dict[str, Any]], by_id: dict[str, dict[str, Any]], o: ReportOptions) -> str:
    """The section's priors: each distinct prior (artifact key) of its runs with its KID against
    held-out public images (``protocol.prior_quality``, :mod:`mi_bench.prior_quality`) and its
    sample grid; "" when no run of the section recorded one (older records)."""
    from mi_bench.prior_quality import PRIOR_GRID, describe, describe_diversity
    from mi_bench.results.gallery import grid_uri

    priors: dict[str, dict[str, Any]] = {}
    for row in rows:
        for rid in row.get("run_ids", []):
            rec = by_id.get(rid)
            pq = ((rec or {}).get("protocol") or {}).get("prior_quality")
            if not isinstance(pq, dict):
                continue
            key = ((rec.get("artifacts") or {}).get("prior") or {}).get("key") or f"run {rid}"
            entry = priors.setdefault(key, {"pq": pq, "rec": rec, "runs": []})
            entry["runs"].append(f"{rec.get('defense_label', '?')} seed {rec.get('seed', '?')}")
    if not priors:
        return ""
    trs = []
    for key, e in priors.items():
        value, note = describe(e["pq"])
        div = describe_diversity(e["pq"])  # a conditional prior (PLG-MI): its samples per class
        if div is not None:
            note += f"; per-class diversity {div[0]}: {div[1]}"
        rec, grid = e["rec"], e["pq"].get("grid")
        paths = ([Path(grid)] if grid else []) + ([Path(o.runs) / rec["run_id"] / PRIOR_GRID] if o.runs else [])
        found = next((p for p in paths if p.is_file()), None)
        img = (f'<img src="{grid_uri(found, 4 * o.thumb)}" alt="samples of prior {esc(key)}">' if found
               else "no grid")
        trs.append(f'<tr><td class="txt">{esc(key)}</td><td>{esc(value)}</td><td class="txt">{esc(note)}</td>'
                   f'<td class="txt">{esc(", ".join(e["runs"]))}</td><td class="txt">{img}</td></tr>')
    txt = ' class="txt"'
    head = "".join(f"<th{'' if h == 'KID' else txt}>{h}</th>" for h in ("prior", "KID", "how", "runs", "samples"))
    return ("<h3>Priors: KID of their samples against held-out public images</h3>"
            f'<div class="scroll"><table class="board"><thead><tr>{head}</tr></thead><tbody>{"".join(trs)}'
            '</tbody></table></div><p class="note">KID: unbiased MMD^2 (cubic kernel) in the evaluator\'s '
            "features, ± std over subsets; about 0 when the prior's samples are distributed like real public "
            "images, higher the further they are. n/a: the attack has no generative prior.</p>")


def build_report(records: list[dict[str, Any]], rows: list[dict[str, Any]], *,
                 effects: list[dict[str, Any]] | None = None, margins: list[dict[str, Any]] | None = None,
                 sources: list[str] | None = None, filters: str = "",
                 options: ReportOptions | None = None) -> str:
    """The HTML page of leaderboard ``rows`` (already filtered) built from ``records``."""
    import mi_bench

    o = options or ReportOptions()
    by_id = {r["run_id"]: r for r in records}
    protocols = Protocols()
    gallery = Gallery(o, RealImages(o.data_root), protocols)
    secs = sections(rows)
    toc, body = [], []
    for key, sec in secs.items():
        title = section_title(key)
        slug = _slug(*key)
        toc.append(f'<li><a href="#{slug}">{esc(title)}</a> ({len(sec)} entries)</li>')
        part = [f'<section id="{slug}"><h2>{esc(title)}</h2>', "<h3>Leaderboard</h3>",
                leaderboard_table(sec, slug), "<h3>Accuracy versus attack accuracy</h3>",
                _figure(sec, title), _priors_html(sec, by_id, o)]
        eff = [e for e in effects or [] if (e["dataset"], e["protocol"], e["attack"], e["preset"]) == key]
        if eff:
            part += ["<h3>Defense effect against the published and matched baselines</h3>", _effects_html(eff, sec)]
        mar = [e for e in margins or [] if (e["dataset"], e["protocol"], e["attack"], e["preset"]) == key
               and e["margins"]]
        if mar:
            mh, mb = margin_rows(mar)
            hn = HealthNotes()
            mb = health_marked_margins(mar, mh, mb, sec, hn)  # judges that failed their health check
            keep = [i for i, h in enumerate(mh) if h not in HIDDEN]
            part += ["<h3>Margins over the calibration baselines</h3>",
                     _md_table_html([mh[i] for i in keep], [[c[i] for i in keep] for c in mb]),
                     _health_html(hn), f'<p class="note">{esc(MARGIN_NOTE)}</p>']
        part += ["<h3>Gallery per defense</h3>", gallery.section(sec, by_id, slug), "</section>"]
        body.append("".join(part))
        log.info("report: %s (%d entries)", title, len(sec))
    n_runs = sum(len(r.get("run_ids", [])) for r in rows)
    src = ", ".join(esc(s) for s in sources or []) or "records"
    legacy = sum(1 for r in records if not r["metrics"].get("judges"))
    intro = (f"<p class=\"note\">{len(rows)} leaderboard entries from {n_runs} runs ({esc(src)}"
             f"{'; ' + esc(filters) if filters else ''}); mi-bench {esc(mi_bench.__version__)}. Click a "
             "column header to sort; click a run link to open its full protocol.")
    if legacy:
        intro += (f" {legacy} of the {len(records)} records predate the judges: their only verdict is "
                  "the evaluator's (eval).")
    intro += "</p>"
    if not rows:
        body.append('<p class="note">No results match.</p>')
    absent_any = any(missing_metrics(r["metrics"])[1] for r in records)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>mi-bench report</title><style>{_css()}{gallery.css()}</style></head><body>"
        f"<h1>mi-bench report</h1>{intro}"
        '<details class="how"><summary>Protocol and columns: how to read the numbers</summary>'
        f'<p class="note">{esc(protocol_note(rows))}'
        + (" n/a = absent by design (reason in the footnote); failed = the computation failed (its "
           "error in the footnote)." if absent_any else "")
        + f"</p></details><nav><ul>{''.join(toc)}</ul></nav>{''.join(body)}{protocols.html()}"
        f"<script>{JS}</script></body></html>\n"
    )


# -- a real browser ----------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def headless_chromium(profile: Path, *, width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium driven by Selenium (Debian's ``chromium`` and ``chromium-driver``),
    with a fresh profile in ``profile`` and no network side channels. Raises RuntimeError saying
    what to install when the binaries or selenium are missing."""
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        raise RuntimeError(f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise RuntimeError("selenium is not installed (pip install -e '.[test]')") from None
    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", f"--window-size={width},{height}", "--hide-scrollbars",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console messages for tests
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    return driver


def screenshot_page(page: Path, png: Path, *, width: int = 1280, height: int = 1500, colors: int = 128) -> Path:
    """Open ``page`` in headless Chromium and save the top ``width`` x ``height`` pixels as a
    PNG with a ``colors``-colour palette (a modest file)."""
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="mi-bench-chromium-") as profile:
        driver = headless_chromium(Path(profile), width=width, height=height)
        try:
            driver.get(Path(page).resolve().as_uri())
            raw = driver.get_screenshot_as_png()
        finally:
            driver.quit()
    img = Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=colors)
    png.parent.mkdir(parents=True, exist_ok=True)
    img.save(png, format="PNG", optimize=True)
    return png
