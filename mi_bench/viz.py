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
        axes[i, 0].set_ylabel(class_names[i], fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tradeoff_plot(path: Path, rows: list[dict[str, Any]], title: str) -> Path:
    """Target accuracy (utility) against attack accuracy (leakage): one panel per
    (dataset, protocol, attack), one colour per defense, each point labelled with its strength."""
    rows = [r for r in rows if r.get("target_acc") is not None and r.get("attack_acc") is not None]
    panels: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        panels.setdefault((r["dataset"], r["protocol"], r["attack"]), []).append(r)
    names = sorted({r["defense"].split("[")[0] for r in rows})
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    n = max(1, len(panels))
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, ((ds, proto, atk), prs) in zip(axes.flat, sorted(panels.items())):
        for r in prs:
            base, _, params = r["defense"].partition("[")
            ax.errorbar(100 * r["attack_acc"], 100 * r["target_acc"],
                        xerr=100 * (r.get("attack_acc_se") or 0), yerr=100 * (r.get("target_acc_se") or 0),
                        fmt="o", ms=5, capsize=2, color=colours[base])
            if params:
                short = ",".join(p.split("=")[-1] for p in params.rstrip("]").split(","))
                ax.annotate(short, (100 * r["attack_acc"], 100 * r["target_acc"]), fontsize=5,
                            xytext=(2, 2), textcoords="offset points", color=colours[base])
        ax.set_xlim(-3, 103)  # the whole range, so panels compare at a glance
        ax.set_title(f"{atk} on {ds} ({proto})", fontsize=8)
        ax.set_xlabel("attack accuracy % (lower = more private)", fontsize=7)
        ax.set_ylabel("target test accuracy %", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[nm], label=nm) for nm in names]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.965), ncol=min(8, len(names)),
               fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
