"""Human labels: ``mi-bench label RUN_ID`` serves a local page where a person judges each
reconstruction of a run, and the labels are stored with the run.

The page (and its JSON endpoints) show each reconstruction beside real private *training* images
of the attacked class and of two other private classes - the three rows in shuffled order, the
attacked one marked - in a shuffled item order that is fixed per run (so several sessions and
several people see the same order). It is blind to the judges: nothing of their verdicts is
sent. The person marks ``same`` (the reconstruction shows the attacked class), ``different`` or
``unsure``.

Storage: ``<run folder>/labels.json`` (``{"run_id", "format": 1, "labels": {index: {"label",
"labeller", "at"}}}``), ``index`` the reconstruction's position in the run's saved array
(class-major: ``class_position * samples_per_class + sample``). Every write happens under a file
lock (``filelock``), reads the current file, updates one entry and replaces the file atomically,
so concurrent labelling of one run (threads, processes, two browser tabs) loses no label; the
last word on one index wins.

Endpoints (127.0.0.1 only; the ``Host`` header must name it, against DNS rebinding; POST bodies
must be ``application/json``, so a foreign web page cannot post labels without a CORS
preflight, which this server never grants):

* ``GET /``                       the page (no external assets);
* ``GET /api/items``              items in the page's shuffled order, with image URLs and any
                                  existing label;
* ``GET /api/image/<i>.png``      reconstruction ``i`` (``?scale=1..16``, nearest neighbour);
* ``GET /api/real/<c>/<k>.png``   the ``k``-th reference image of private class ``c``;
* ``GET /api/item/<p>.png``       item at position ``p`` as one sheet (reconstruction, then the
                                  three reference rows, the attacked one framed) - for labelling
                                  by eye through the API;
* ``GET /api/sheets.png?start=&count=``  up to 50 such sheets stacked, captioned with positions;
* ``GET /api/labels``             ``{index: label}``;
* ``POST /api/label``             ``{"index": i, "label": "same"|"different"|"unsure",
                                  "labeller": "name"}`` (or ``"position": p`` instead of
                                  ``index``, the item's place in the shuffled order).

Bad input gets a 4xx status with ``{"error": message}``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from filelock import FileLock

from mi_bench.errors import ArtifactError
from mi_bench.fsutil import atomic_write
from mi_bench.images import to_hwc_uint8

log = logging.getLogger(__name__)

LABELS = "labels.json"
CHOICES = ("same", "different", "unsure")
HOST = "127.0.0.1"


# -- storage -----------------------------------------------------------------------------------

def labels_path(run_folder: str | Path) -> Path:
    return Path(run_folder) / LABELS


def load_labels(run_folder: str | Path, *, file: str | Path | None = None) -> dict[int, dict[str, Any]]:
    """``{index: {"label", "labeller", "at"}}`` of a run folder (or of a copied labels ``file``);
    empty when nobody labelled."""
    path = Path(file) if file is not None else labels_path(run_folder)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {int(k): v for k, v in data["labels"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path} is not a readable labels file ({exc}); move it away and relabel") from None


def copy_labels(source_folder: str | Path, folder: str | Path, run_id: str) -> int:
    """Copy the human labels of one run folder to another holding the same reconstructions
    (``mi-bench rescore``), under the source's lock; returns how many were copied."""
    src = labels_path(source_folder)
    if not src.is_file():
        return 0
    with FileLock(str(src) + ".lock", timeout=30):
        labels = load_labels(source_folder)
    data = {"run_id": run_id, "format": 1, "copied_from": str(source_folder),
            "labels": {str(k): v for k, v in sorted(labels.items())}}
    atomic_write(labels_path(folder), lambda p: Path(p).write_text(json.dumps(data, indent=1)))
    return len(labels)


def save_label(run_folder: str | Path, run_id: str, index: int, label: str, labeller: str = "") -> int:
    """Store one label under the run folder's file lock; returns how many items are labelled."""
    if label not in CHOICES:
        raise ValueError(f"label must be one of {', '.join(CHOICES)} (got {label!r})")
    path = labels_path(run_folder)
    with FileLock(str(path) + ".lock", timeout=30):
        labels = load_labels(run_folder)
        labels[int(index)] = {"label": label, "labeller": labeller,
                              "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        data = {"run_id": run_id, "format": 1,
                "labels": {str(k): v for k, v in sorted(labels.items())}}
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(data, indent=1)))
        return len(labels)


# -- items -------------------------------------------------------------------------------------

@dataclass
class LabelSession:
    """What the page shows for one run: reconstructions (classes x samples x C x H x W in
    [0, 1]), their private classes, reference images per private class, and display names."""

    run_id: str
    run_folder: Path
    images: torch.Tensor
    classes: list[int]
    references: dict[int, torch.Tensor]  # private class -> (k, C, H, W)
    class_names: dict[int, str]
    items: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n_cls, n_s = self.images.shape[:2]
        rng = np.random.default_rng(int(hashlib.sha256(self.run_id.encode()).hexdigest()[:8], 16))
        order = rng.permutation(n_cls * n_s)
        private = sorted(self.references)
        self.items = []
        for pos, index in enumerate(order.tolist()):
            c = self.classes[index // n_s]
            others = [o for o in private if o != c]
            pick = rng.choice(len(others), size=min(2, len(others)), replace=False)
            rows = [c, *[others[i] for i in pick]]
            rows = [rows[i] for i in rng.permutation(len(rows))]
            self.items.append({"position": pos, "index": index, "class": c, "rows": rows})

    @property
    def n(self) -> int:
        return self.images.shape[0] * self.images.shape[1]

    def image(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.n:
            raise IndexError(f"reconstruction index {index} is out of range 0..{self.n - 1}")
        n_s = self.images.shape[1]
        return self.images[index // n_s, index % n_s]

    def describe(self) -> dict[str, Any]:
        labels = load_labels(self.run_folder)
        return {
            "run_id": self.run_id, "n": self.n, "choices": list(CHOICES),
            "labelled": len(labels),
            "items": [{
                "position": it["position"], "index": it["index"],
                "class": it["class"], "class_name": self.class_names[it["class"]],
                "label": labels.get(it["index"], {}).get("label"),
                "image": f"/api/image/{it['index']}.png",
                "sheet": f"/api/item/{it['position']}.png",
                "references": [{
                    "role": "attacked" if r == it["class"] else "other",
                    "class": r, "class_name": self.class_names[r],
                    "images": [f"/api/real/{r}/{k}.png" for k in range(len(self.references[r]))],
                } for r in it["rows"]],
            } for it in self.items],
        }

    def sheet(self, position: int, scale: int = 3) -> np.ndarray:
        """One item as an RGB image: the reconstruction (large), then the reference rows; the
        attacked row framed in green."""
        if not 0 <= position < len(self.items):
            raise IndexError(f"item position {position} is out of range 0..{len(self.items) - 1}")
        it = self.items[position]
        recon = _rgb(self.image(it["index"]))
        h, w = recon.shape[:2]
        s = scale
        pad = 2 * s
        k = max(len(self.references[r]) for r in it["rows"])
        big = 2 * s
        width = pad + w * big + 3 * pad + k * (w * s + pad)
        height = max(h * big + 2 * pad, len(it["rows"]) * (h * s + 2 * pad) + pad)
        canvas = np.full((height, width, 3), 255, np.uint8)
        canvas[pad:pad + h * big, pad:pad + w * big] = np.kron(recon, np.ones((big, big, 1), np.uint8))
        x0 = pad + w * big + 3 * pad
        for row, r in enumerate(it["rows"]):
            y = pad + row * (h * s + 2 * pad)
            if r == it["class"]:
                canvas[y - s:y + h * s + s, x0 - s:x0 + k * (w * s + pad) - pad + s] = (40, 160, 40)
            for j, ref in enumerate(self.references[r]):
                xx = x0 + j * (w * s + pad)
                canvas[y:y + h * s, xx:xx + w * s] = np.kron(_rgb(ref), np.ones((s, s, 1), np.uint8))
        return canvas

    def sheets(self, start: int, count: int) -> np.ndarray:
        """Items ``start .. start + count - 1`` stacked, each captioned with its position."""
        from PIL import Image, ImageDraw

        parts = []
        for pos in range(start, min(start + count, len(self.items))):
            sheet = self.sheet(pos)
            cap = Image.new("RGB", (sheet.shape[1], 14), "white")
            ImageDraw.Draw(cap).text((4, 1), f"position {pos}", fill=(0, 0, 0))
            parts += [np.asarray(cap), sheet, np.full((4, sheet.shape[1], 3), 128, np.uint8)]
        width = max(p.shape[1] for p in parts)
        return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255)
                               for p in parts])


def _rgb(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) uint8 (grey repeated to three channels)."""
    a = to_hwc_uint8(x)
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def _png(a: np.ndarray, scale: int = 1) -> bytes:
    from PIL import Image

    if scale > 1:
        a = np.kron(a, np.ones((scale, scale, 1), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def session_for_run(record: dict[str, Any], data_root: str | None = None, n_refs: int = 5) -> LabelSession:
    """Build the session of a stored run: its saved reconstructions and real private training
    images (loaded from the dataset of the run's config)."""
    from mi_bench.artifacts import resolve_cache_dir
    from mi_bench.data import load_splits, resolve_data_root
    from mi_bench.record import dataset_config
    from mi_bench.runs import load_reconstructions

    folder = record.get("run_dir")
    if not folder:
        raise ArtifactError(f"run {record['run_id']} has no run folder (recorded before mi-bench 0.2); re-run it")
    images, classes = load_reconstructions(Path(folder))
    config = record["config"]
    splits = load_splits(dataset_config(record, download=False),
                         resolve_data_root(data_root if data_root is not None else config.get("data_root", "")),
                         cache_dir=resolve_cache_dir(config.get("cache_dir", "")))
    x, y = splits.private_train
    rng = np.random.default_rng(0)
    refs = {}
    for c in range(splits.num_private_classes):
        idx = (y == c).nonzero().flatten().numpy()
        refs[c] = x[rng.permutation(idx)[:n_refs]]
    people = splits.info.get("class_names")  # face datasets: the identities' names
    names = {c: (f"{people[c]} (class {c})" if people else f"class {c} (label {splits.private_classes[c]})")
             for c in refs}
    return LabelSession(record["run_id"], Path(folder), images, classes, refs, names)


# -- server ------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server: "LabelServer"

    def log_message(self, fmt: str, *args: Any) -> None:  # requests go to the debug log, not stderr
        log.debug("label server: " + fmt, *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if host in (HOST, "localhost"):
            return True
        self._error(HTTPStatus.FORBIDDEN, f"requests must be addressed to {HOST} (Host: {host!r})")
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if not self._host_ok():
            return
        sess = self.server.session
        url = urlparse(self.path)
        parts = [p for p in url.path.split("/") if p]
        try:
            if url.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
            elif parts == ["api", "items"]:
                self._json(HTTPStatus.OK, sess.describe())
            elif parts == ["api", "labels"]:
                self._json(HTTPStatus.OK, {str(k): v["label"] for k, v in load_labels(sess.run_folder).items()})
            elif len(parts) == 3 and parts[:2] == ["api", "image"] and parts[2].endswith(".png"):
                scale = _int_arg(parse_qs(url.query).get("scale", ["1"])[0], "scale", 1, 16)
                self._send(HTTPStatus.OK, _png(_rgb(sess.image(_int_arg(parts[2][:-4], "index"))), scale),
                           "image/png")
            elif len(parts) == 3 and parts[:2] == ["api", "item"] and parts[2].endswith(".png"):
                self._send(HTTPStatus.OK, _png(sess.sheet(_int_arg(parts[2][:-4], "position"))), "image/png")
            elif parts == ["api", "sheets.png"]:
                q = parse_qs(url.query)
                start = _int_arg(q.get("start", ["0"])[0], "start", 0, max(0, len(sess.items) - 1))
                count = _int_arg(q.get("count", ["10"])[0], "count", 1, 50)
                self._send(HTTPStatus.OK, _png(sess.sheets(start, count)), "image/png")
            elif len(parts) == 4 and parts[:2] == ["api", "real"] and parts[3].endswith(".png"):
                c, k = _int_arg(parts[2], "class"), _int_arg(parts[3][:-4], "reference")
                if c not in sess.references or not 0 <= k < len(sess.references[c]):
                    raise IndexError(f"no reference image {k} of class {c}")
                self._send(HTTPStatus.OK, _png(_rgb(sess.references[c][k])), "image/png")
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
        except IndexError as exc:
            self._error(HTTPStatus.NOT_FOUND, str(exc))
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        if not self._host_ok():
            return
        sess = self.server.session
        if urlparse(self.path).path != "/api/label":
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: POST {self.path}")
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "POST /api/label needs Content-Type: application/json")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= 10_000:
                raise ValueError("the body must be a small JSON object")
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            if "index" not in body and "position" in body:  # labelling from /api/sheets.png
                pos = body["position"]
                if not isinstance(pos, int) or isinstance(pos, bool) or not 0 <= pos < len(sess.items):
                    raise ValueError(f"'position' must be an integer in 0..{len(sess.items) - 1} (got {pos!r})")
                body["index"] = sess.items[pos]["index"]
            index = body.get("index")
            if not isinstance(index, int) or isinstance(index, bool):
                raise ValueError(f"'index' must be an integer (got {index!r})")
            if not 0 <= index < sess.n:
                raise ValueError(f"reconstruction index {index} is out of range 0..{sess.n - 1}")
            labeller = body.get("labeller", "")
            if not isinstance(labeller, str) or len(labeller) > 100:
                raise ValueError("'labeller' must be a short string")
            count = save_label(sess.run_folder, sess.run_id, index, body.get("label"), labeller)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        self._json(HTTPStatus.OK, {"ok": True, "index": index, "label": body["label"],
                                   "labelled": count, "total": sess.n})


def _int_arg(text: str, what: str, lo: int | None = None, hi: int | None = None) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer (got {text!r})") from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{what} must be in {lo}..{hi} (got {v})")
    return v


class LabelServer(ThreadingHTTPServer):
    """HTTP server on 127.0.0.1 for one :class:`LabelSession` (``port=0`` picks a free port)."""

    daemon_threads = True

    def __init__(self, session: LabelSession, port: int = 0) -> None:
        self.session = session
        super().__init__((HOST, port), _Handler)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"

    def start_background(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, daemon=True)
        t.start()
        return t


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mi-bench: label reconstructions</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:60em}
#recon{width:192px;height:192px;image-rendering:pixelated;border:1px solid #888;background:#000}
.row{display:flex;align-items:center;gap:6px;margin:6px 0;padding:4px;border:3px solid transparent}
.row.attacked{border-color:#2a2}
.row img{width:64px;height:64px;image-rendering:pixelated}
.row .name{width:14em;font-size:.9em}
button{font-size:1.1em;margin:4px;padding:.4em 1em}
button.chosen{outline:3px solid #2a2}
#layout{display:flex;gap:2em;align-items:flex-start}
#status{margin:.6em 0;color:#555}
</style></head><body>
<h1>Does the reconstruction show the marked class?</h1>
<p>Left: one reconstruction. Right: real private images of three classes in random order; the
class the attack tried to recover is framed in green. Judge by eye: <b>same</b> if a person
would say it shows that class, <b>different</b> if not, <b>unsure</b> otherwise. Keys: s / d / u,
arrows to move.</p>
<p><label>Your name <input id="labeller" value="anonymous" size="12"></label></p>
<div id="status">loading...</div>
<div id="layout"><div><img id="recon" alt="reconstruction"><div id="pos"></div></div>
<div id="refs"></div></div>
<div><button id="same" data-label="same">same (s)</button>
<button id="different" data-label="different">different (d)</button>
<button id="unsure" data-label="unsure">unsure (u)</button>
<button id="prev">&larr; back</button><button id="next">next &rarr;</button></div>
<script>
"use strict";
let items = [], cur = 0, labelled = 0, total = 0;
const $ = (id) => document.getElementById(id);
function status(msg) { $("status").textContent = msg; }
function show() {
  if (!items.length) { status("no reconstructions"); return; }
  const it = items[cur];
  $("recon").src = it.image;
  $("recon").dataset.index = it.index;
  $("pos").textContent = "item " + (cur + 1) + " of " + items.length;
  const refs = $("refs"); refs.textContent = "";
  for (const r of it.references) {
    const row = document.createElement("div");
    row.className = "row" + (r.role === "attacked" ? " attacked" : "");
    const name = document.createElement("span"); name.className = "name";
    name.textContent = r.class_name + (r.role === "attacked" ? " - attacked" : "");
    row.appendChild(name);
    for (const src of r.images) { const im = document.createElement("img"); im.src = src; row.appendChild(im); }
    refs.appendChild(row);
  }
  for (const b of ["same", "different", "unsure"]) $(b).classList.toggle("chosen", it.label === b);
  status(labelled + " / " + total + " labelled" + (it.label ? " - this one: " + it.label : ""));
}
async function load() {
  const r = await fetch("/api/items");
  const d = await r.json();
  items = d.items; labelled = d.labelled; total = d.n;
  const first = items.findIndex((it) => !it.label);
  cur = first < 0 ? 0 : first;
  show();
}
async function mark(label) {
  const it = items[cur];
  const r = await fetch("/api/label", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({index: it.index, label: label, labeller: $("labeller").value})});
  const d = await r.json();
  if (!r.ok) { status("error: " + d.error); return; }
  it.label = label; labelled = d.labelled;
  const next = items.findIndex((x, i) => i > cur && !x.label);
  if (next >= 0) cur = next; else if (cur < items.length - 1) cur += 1;
  show();
  if (labelled === total) status("all " + total + " labelled - thank you");
}
for (const b of ["same", "different", "unsure"]) $(b).addEventListener("click", () => mark(b));
$("prev").addEventListener("click", () => { if (cur > 0) { cur -= 1; show(); } });
$("next").addEventListener("click", () => { if (cur < items.length - 1) { cur += 1; show(); } });
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT") return;
  const k = {s: "same", d: "different", u: "unsure"}[e.key];
  if (k) mark(k);
  else if (e.key === "ArrowLeft") $("prev").click();
  else if (e.key === "ArrowRight") $("next").click();
});
load().catch((e) => status("error: " + e));
</script></body></html>
"""
