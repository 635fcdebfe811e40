"""The report's galleries: real private images beside each run's saved reconstructions.

Per section (dataset / protocol / attack / preset) the same attacked classes for every defense;
each reconstruction framed green when every judge names the attacked class, orange when some do,
red when none does, with one dot per judge underneath (its prediction in the tooltip).
Reconstructions come from the run folder (``reconstructions.safetensors``), verdicts from the
record (per-judge predictions; older records: the evaluator's). Real images come from the
dataset named in the run's config (never downloaded; :class:`RealImages`); when it cannot be
loaded the run's ``grid.png`` (which holds real images) is shown instead and the page says why.
Images are embedded as PNG data URIs (:func:`png_uri`, :func:`grid_uri`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mi_bench.images import to_hwc_uint8

log = logging.getLogger(__name__)



OK, SOME, NONE = "#2e9e44", "#e38b12", "#c83a2e"  # frame colours: all / some / no judges agree
REJECTED = "#9a9a9a"


COLOURS = {"ok": OK, "some": SOME, "no": NONE, "rej": REJECTED}


@dataclass
class ReportOptions:
    classes: int = 5  # attacked classes per gallery (the same ones for every defense of a section)
    samples: int = 5  # reconstructions per class
    real: int = 3  # real private training images per class
    thumb: int = 64  # longest side of an embedded image in pixels (larger ones are downscaled)
    grid_width: int = 900  # a fallback grid.png wider than this is downscaled
    data_root: str | None = None  # dataset root (default: each run's data_root / $MI_BENCH_DATA)
    runs: Path | None = None  # another folder holding run folders, looked up by run id


def esc(text: Any, quote: bool = True) -> str:
    """HTML-escaped text (``quote``: also quotes, for attribute values) with URLs defused
    (``https&#58;//``: displayed unchanged, but nothing in the file reads as a web reference)."""
    return (html.escape(str(text), quote=quote).replace("http://", "http&#58;//")
            .replace("https://", "https&#58;//"))


def png_uri(a: np.ndarray, thumb: int = 0) -> str:
    """``a`` (H x W or H x W x C uint8) as a PNG data URI, downscaled to ``thumb`` pixels on its
    longest side when larger."""
    from PIL import Image

    img = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)
    if thumb and max(img.size) > thumb:
        img.thumbnail((thumb, thumb), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def grid_uri(path: Path, max_width: int) -> str:
    """A run's grid.png, downscaled to ``max_width`` and re-encoded with a 64-colour palette."""
    from PIL import Image

    with Image.open(path) as im:
        img = im.convert("RGB")
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
    buf = io.BytesIO()
    img.quantize(colors=64).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _candidates(rec: dict[str, Any], runs: Path | None) -> list[Path]:
    out = [Path(rec["run_dir"])] if rec.get("run_dir") else []
    if runs is not None:
        out.append(Path(runs) / rec["run_id"])
    return out


def find_reconstructions(rec: dict[str, Any], runs: Path | None) -> Path | None:
    """The run folder holding the run's saved reconstructions, if any is found."""
    from mi_bench.runs import RECONSTRUCTIONS

    return next((p for p in _candidates(rec, runs) if (p / RECONSTRUCTIONS).is_file()), None)


def find_grid(rec: dict[str, Any], runs: Path | None) -> Path | None:
    from mi_bench.runs import GRID

    paths = [Path(rec["grid"])] if rec.get("grid") else []
    paths += [p / GRID for p in _candidates(rec, runs)]
    if runs is not None and rec.get("grid"):
        paths.append(Path(runs) / Path(rec["grid"]).name)
    return next((p for p in paths if p.is_file()), None)


class RealImages:
    """Real private training images per dataset config, loaded once (never downloading)."""

    def __init__(self, data_root: str | None) -> None:
        self.data_root = data_root
        self.cache: dict[str, Any] = {}

    def key(self, rec: dict[str, Any]) -> str:
        cfg = rec["config"]
        root = self.data_root if self.data_root is not None else cfg.get("data_root", "")
        return json.dumps([cfg["dataset"], str(root)], sort_keys=True, default=str)

    def splits(self, rec: dict[str, Any]) -> Any:
        """The run's data splits, or the reason they cannot be loaded (a string)."""
        from mi_bench.artifacts import resolve_cache_dir
        from mi_bench.data import load_splits, resolve_data_root
        from mi_bench.record import dataset_config

        cfg = rec["config"]
        root = self.data_root if self.data_root is not None else cfg.get("data_root", "")
        key = self.key(rec)
        if key not in self.cache:
            try:
                self.cache[key] = load_splits(dataset_config(rec, download=False), resolve_data_root(root),
                                              cache_dir=resolve_cache_dir(cfg.get("cache_dir", "")))
            except Exception as exc:  # noqa: BLE001 - any reason: the report falls back to the grid
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                self.cache[key] = f"{type(exc).__name__}: {msg}"
                log.warning("report: real images of %s unavailable (%s)", cfg["dataset"]["name"], msg)
        return self.cache[key]


def verdicts(rec: dict[str, Any]) -> dict[str, list[list[int]]]:
    """Each judge's predictions (classes x samples, domain labels, -1 = rejected); records
    before the judges existed have only the evaluator's."""
    m = rec["metrics"]
    judged = {j: res["predictions"] for j, res in (m.get("judges") or {}).items() if res.get("predictions")}
    if not judged and m.get("evaluator_predictions"):
        judged = {"eval": m["evaluator_predictions"]}
    return judged


class Gallery:
    """The galleries of one section: the same attacked classes for every defense."""

    def __init__(self, options: ReportOptions, real: RealImages, protocols: Any) -> None:
        """``protocols``: the report's :class:`mi_bench.results.report.Protocols` (its
        ``details(record)`` is each card's protocol)."""
        self.o = options
        self.real = real
        self.protocols = protocols
        self.real_css: dict[tuple[str, int, int], tuple[str, str]] = {}

    def _pick(self, recs: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, Path | None]:
        """The run to show (lowest seed with saved reconstructions) and its folder."""
        for rec in recs:
            folder = find_reconstructions(rec, self.o.runs)
            if folder is not None:
                return rec, folder
        return (recs[0] if recs else None), None

    def section(self, rows: list[dict[str, Any]], by_id: dict[str, dict[str, Any]], slug: str) -> str:
        from mi_bench.runs import load_reconstructions

        picks = []
        for r in sorted(rows, key=lambda r: r["defense"].split("[")[0] != "none"):  # undefended first
            recs = [by_id[i] for i in r.get("run_ids", []) if i in by_id]
            rec, folder = self._pick(recs)
            loaded = None
            if folder is not None:
                try:
                    loaded = load_reconstructions(folder)
                except Exception as exc:  # noqa: BLE001 - a corrupt file: say so, show the rest
                    loaded = f"{type(exc).__name__}: {exc}"
            picks.append((r, recs, rec, loaded))
        sets = [set(l[1]) for *_, l in picks if isinstance(l, tuple)]
        common = sorted(set.intersection(*sets)) if sets else []
        classes = common[: self.o.classes]
        legend = (f'<p class="legend">Each row: real private training images of one attacked class '
                  f"(left), then the run's first {self.o.samples} reconstructions of that class. Frame: "
                  f'<span class="sw" style="background:{OK}"></span> every judge names the attacked class, '
                  f'<span class="sw" style="background:{SOME}"></span> some do, '
                  f'<span class="sw" style="background:{NONE}"></span> none does. Dots under an image: one '
                  "per judge, in the order listed on the card (green = attacked class, red = another "
                  f'class, grey = rejected); hover for the predictions. The same {len(classes)} classes '
                  "for every defense of this section.</p>" if sets else "")
        if sets and len(common) < max(len(s) for s in sets):
            legend += ('<p class="note">The runs attacked different classes; only the classes all of '
                       "them attacked are shown.</p>")
        cards = [self._card(r, recs, rec, loaded, classes) for r, recs, rec, loaded in picks]
        return f'<div class="gallery" id="{slug}-gallery">{legend}{"".join(cards)}</div>'

    def _card(self, row: dict[str, Any], recs: list[dict[str, Any]], rec: dict[str, Any] | None,
              loaded: Any, classes: list[int]) -> str:
        head = f"<h4>{esc(row['defense'])}{' (' + esc(row['variant']) + ')' if row.get('variant') else ''}</h4>"
        if rec is None:
            return f'<div class="card">{head}<p class="note">No run record.</p></div>'
        m = rec["metrics"]
        judges = list(verdicts(rec))
        info = (f'<p class="meta">run {esc(rec["run_id"])}, seed {esc(rec["config"]["seed"])}; '
                f"judges: {esc(', '.join(judges) or 'none recorded')}")
        if m.get("attack_acc") is not None:
            info += f"; attack acc {100 * m['attack_acc']:.1f}%"
        if m.get("consensus_acc") is not None:
            info += f", consensus {100 * m['consensus_acc']:.1f}%"
        info += "</p>"
        details = "".join(self.protocols.details(r) for r in recs)
        return f'<div class="card">{head}{info}{self._images(rec, loaded, classes)}{details}</div>'

    def _images(self, rec: dict[str, Any], loaded: Any, classes: list[int]) -> str:
        grid = find_grid(rec, self.o.runs)
        if not isinstance(loaded, tuple):
            why = (f"its saved reconstructions could not be read ({loaded})" if isinstance(loaded, str)
                   else "its reconstructions were not kept (run folder not found, or recorded before "
                   "mi-bench saved them)")
            if grid is None:
                return f'<p class="note">No images: {esc(why)}, and its grid.png is not found.</p>'
            return f'<p class="note">Showing the run\'s grid.png: {esc(why)}.</p>' + self._grid(grid, rec)
        images, saved = loaded
        splits = self.real.splits(rec)
        if isinstance(splits, str):
            why = f"the dataset could not be loaded ({splits})"
            if grid is not None:
                return (f'<p class="note">Real images unavailable: {esc(why)}; showing the run\'s grid.png '
                        "(real images on the left of each row).</p>" + self._grid(grid, rec))
            note = f'<p class="note">Real images unavailable: {esc(why)}; reconstructions only.</p>'
        else:
            note = ""
        judged = verdicts(rec)
        private = rec["protocol"]["data"]["private_classes"]
        rows = []
        for c in classes or saved[: self.o.classes]:
            ci = saved.index(c)
            label = private[c] if c < len(private) else c
            cells = [f'<th scope="row">class {esc(c)}<br><small>label {esc(label)}</small></th>']
            real = ""
            if not isinstance(splits, str):
                x, y = splits.private_train
                for k, img in enumerate(x[y == c][: self.o.real]):
                    real += self._real_image(self.real.key(rec), c, k, img)
            cells.append(f'<td class="reals">{real}</td>')
            recon = ""
            for s in range(min(self.o.samples, images.shape[1])):
                recon += self._framed(images[ci, s], judged, ci, s, label, c)
            cells.append(f'<td class="recons">{recon}</td>')
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return note + f'<table class="imgs"><tbody>{"".join(rows)}</tbody></table>'

    def _grid(self, path: Path, rec: dict[str, Any]) -> str:
        return f'<img class="grid" src="{grid_uri(path, self.o.grid_width)}" alt="grid of run {esc(rec["run_id"])}">'

    def _real_image(self, data_key: str, c: int, k: int, img: Any) -> str:
        """A real image, embedded once per report as a CSS class (every card of a dataset shows
        the same real images) and shown as a ``span`` with that background."""
        key = (data_key, c, k)
        if key not in self.real_css:
            self.real_css[key] = (f"ri{len(self.real_css)}", png_uri(to_hwc_uint8(img), self.o.thumb))
        return f'<span class="real {self.real_css[key][0]}" role="img" aria-label="real image {k}, class {c}"></span>'

    def css(self) -> str:
        return "".join(f'.{name}{{background-image:url("{uri}")}}' for name, uri in self.real_css.values())

    def _framed(self, img: Any, judged: dict[str, list[list[int]]], ci: int, s: int, label: int, c: int) -> str:
        """A reconstruction in a frame (class ``f-ok`` / ``f-some`` / ``f-no``: all / some / no
        judge names the attacked class; ``f-none``: no verdict recorded) with one dot per judge
        (``d-ok`` attacked class, ``d-no`` another class, ``d-rej`` rejected)."""
        dots, tips, ok = [], [], []
        for j, pred in judged.items():
            try:
                p = pred[ci][s]
            except (IndexError, TypeError):
                continue
            ok.append(p == label)
            kind = "ok" if p == label else ("rej" if p == -1 else "no")
            dots.append(f'<i class="d-{kind}"></i>')
            tips.append(f"{j} {'rejected' if p == -1 else p}{' ✓' if p == label else ''}")
        frame = "none" if not ok else ("ok" if all(ok) else ("no" if not any(ok) else "some"))
        tip = f"class {c} (label {label}): " + (", ".join(tips) or "no verdicts recorded")
        return (f'<span class="recon f-{frame}" title="{esc(tip)}"><img src="{png_uri(to_hwc_uint8(img), self.o.thumb)}" '
                f'alt="reconstruction {s}, class {c}"><span class="dots">{"".join(dots)}</span></span>')
