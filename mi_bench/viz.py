"""Image grids of reconstructions next to real private images, and tradeoff plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _to_img(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu().clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def save_grid(
    path: Path, images: torch.Tensor, classes: list[int], real: list[torch.Tensor],
    correct: list[list[bool | None]], predictions: list[list[Any]], class_names: list[str], title: str,
) -> Path:
    """One row per attacked class: real private images, then the reconstructions, each framed
    green when judged the attacked class, red when not, orange for ``None`` (judges disagree),
    with the prediction(s) under it."""
    n_cls, n_s = images.shape[:2]
    n_real = max((len(r) for r in real), default=0)
    cols = n_real + n_s + (1 if n_real else 0)
    fig, axes = plt.subplots(n_cls, cols, figsize=(1.1 * cols, 1.25 * n_cls + 0.6), squeeze=False)
    gray = images.shape[2] == 1
    for i, c in enumerate(classes):
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < n_real and j < len(real[i]):
                ax.imshow(_to_img(real[i][j]), cmap="gray" if gray else None, vmin=0, vmax=1)
                if i == 0:
                    ax.set_title("real", fontsize=7)
            elif j > n_real or (n_real == 0 and j >= 0):
                k = j - n_real - (1 if n_real else 0)
                ax.imshow(_to_img(images[i, k]), cmap="gray" if gray else None, vmin=0, vmax=1)
                ok = correct[i][k]
                colour = "tab:orange" if ok is None else ("tab:green" if ok else "tab:red")
                for s in ax.spines.values():
                    s.set_visible(True), s.set_color(colour), s.set_linewidth(2.5)
                ax.set_xlabel(str(predictions[i][k]), fontsize=6)
                if i == 0 and k == 0:
                    ax.set_title("reconstructions", fontsize=7, loc="left")
        name = class_names[i]
        longest = max((len(line) for line in name.splitlines()), default=0)
        axes[i, 0].set_ylabel(name, fontsize=8 if longest <= 18 else 6)  # people's names are long
    fig.suptitle(title, fontsize=8, y=1 - 0.08 / fig.get_figheight())
    # keep a fixed strip for the (two-line) title: a fraction of the height would shrink to
    # nothing on tall grids (faces: 62 rows) and the first row would cover the title
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (attack accuracy, target accuracy) points no other point beats: lower
    or equal attack accuracy and higher or equal target accuracy, one of them strictly. Sorted
    by attack accuracy."""
    front = [i for i, (a, t) in enumerate(points)
             if not any(a2 <= a and t2 >= t and (a2, t2) != (a, t) for a2, t2 in points)]
    return sorted(front, key=lambda i: points[i])


def _err(v: float, ci: list[float] | None) -> list[list[float]]:
    """Asymmetric error bar (in %) from a 95% interval; none without one."""
    if not ci or ci[0] is None:
        return [[0.0], [0.0]]
    return [[100 * max(0.0, v - ci[0])], [100 * max(0.0, ci[1] - v)]]


def defense_colours(rows: list[dict[str, Any]]) -> dict[str, Any]:
    names = sorted({r["defense"].split("[")[0] for r in rows})
    return {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}


def tradeoff_panel(ax: Any, rows: list[dict[str, Any]], colours: dict[str, Any], title: str) -> None:
    """Target accuracy (utility) against attack accuracy (leakage) of ``rows`` (leaderboard
    entries of one dataset/protocol/attack): 95% intervals as error bars on both axes, one colour
    per defense, strengths as labels, the Pareto front (no entry is both more private and more
    accurate) as a dashed line through ringed points."""
    rows = [r for r in rows if r.get("target_acc") is not None and r.get("attack_acc") is not None]
    for r in rows:
        base, _, params = r["defense"].partition("[")
        x, y = 100 * r["attack_acc"], 100 * r["target_acc"]
        ax.errorbar(x, y, xerr=_err(r["attack_acc"], r.get("attack_acc_ci")),
                    yerr=_err(r["target_acc"], r.get("target_acc_ci")), fmt="o", ms=5, capsize=2,
                    elinewidth=0.8, color=colours[base])
        if params:
            short = ",".join(p.split("=")[-1] for p in params.rstrip("]").split(","))
            ax.annotate(short, (x, y), fontsize=5, xytext=(2, 2), textcoords="offset points",
                        color=colours[base])
    front = pareto_front([(r["attack_acc"], r["target_acc"]) for r in rows])
    if front:
        xs = [100 * rows[i]["attack_acc"] for i in front]
        ys = [100 * rows[i]["target_acc"] for i in front]
        ax.plot(xs, ys, ls="--", lw=0.9, color="0.35", zorder=0, drawstyle="steps-post")
        ax.scatter(xs, ys, s=110, facecolors="none", edgecolors="0.2", linewidths=0.9, zorder=3)
    ax.set_xlim(-3, 103)  # the whole range, so panels compare at a glance
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("attack accuracy % (lower = more private)", fontsize=7)
    ax.set_ylabel("target test accuracy %", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)


def _legend(fig: Any, colours: dict[str, Any], y: float) -> None:
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=n) for n, c in colours.items()]
    handles.append(plt.Line2D([], [], marker="o", ms=9, mfc="none", mec="0.2", ls="--", color="0.35",
                              label="Pareto front"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, y), ncol=min(6, len(handles)),
               fontsize=7, frameon=False)


def tradeoff_png(rows: list[dict[str, Any]], title: str, dpi: int = 90) -> bytes:
    """One panel (:func:`tradeoff_panel`) with its legend, as PNG bytes (the HTML report)."""
    import io

    colours = defense_colours(rows)
    n_leg = (len(colours) + 1 + 5) // 6
    fig, ax = plt.subplots(figsize=(5.2, 3.9 + 0.2 * n_leg))
    tradeoff_panel(ax, rows, colours, title)
    _legend(fig, colours, 0.995)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.06 * n_leg) / (1 + 0.05 * n_leg)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def tradeoff_plot(path: Path, rows: list[dict[str, Any]], title: str) -> Path:
    """Target accuracy (utility) against attack accuracy (leakage): one panel per
    (dataset, protocol, attack) (:func:`tradeoff_panel`), one colour per defense."""
    rows = [r for r in rows if r.get("target_acc") is not None and r.get("attack_acc") is not None]
    panels: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        panels.setdefault((r["dataset"], r["protocol"], r["attack"]), []).append(r)
    colours = defense_colours(rows)
    n = max(1, len(panels))
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, ((ds, proto, atk), prs) in zip(axes.flat, sorted(panels.items())):
        tradeoff_panel(ax, prs, colours, f"{atk} on {ds} ({proto})")
    _legend(fig, colours, 0.965)
    fig.suptitle(title + " (error bars: 95% intervals)", fontsize=9, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
