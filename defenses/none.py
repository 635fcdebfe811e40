"""The undefended baseline: plain cross-entropy training (every hook of Defense left as is)."""

from __future__ import annotations

from mi_bench.api import Defense, register_defense


@register_defense("none")
class NoDefense(Defense):
    summary = "no defense: plain cross-entropy training (the baseline)"
    paper = "-"
