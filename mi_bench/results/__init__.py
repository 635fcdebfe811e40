"""Results: where run records are stored, what is computed from them, and how it is shown.

* :mod:`~mi_bench.results.store` - the SQLite index of the runs' ``record.json`` files
  (:class:`ResultStore`), records files (:func:`load_records`, :func:`dump_jsonl`) and the
  pre-run check that results can be written (:func:`preflight`);
* :mod:`~mi_bench.results.leaderboard` - one entry per configuration over seeds, with intervals,
  judges and the human check (:func:`leaderboard`, :func:`current`, :func:`select`);
* :mod:`~mi_bench.results.effects` - defense effects against published and matched baselines,
  attacks' margins over the calibration baselines (:func:`defense_effects`,
  :func:`baseline_margins`);
* :mod:`~mi_bench.results.render` - Markdown, CSV, JSON, LaTeX, HTML tables (:func:`render`);
* :mod:`~mi_bench.results.terminal` - the leaderboard fitted to a terminal;
* :mod:`~mi_bench.results.report` and :mod:`~mi_bench.results.gallery` - the self-contained HTML
  report.

Storage, analysis and rendering only meet here: analysis functions take and return plain dicts
and lists, renderers only format them. The names below are the package's public API.
"""

from mi_bench.errors import ResultsError
from mi_bench.results.effects import baseline_margins, calibration_attacks, defense_effects, verdict
from mi_bench.results.leaderboard import (
    current, human_check, judge_names, leaderboard, missing_metrics, section_title, sections, select,
    superseded,
)
from mi_bench.results.render import (
    EFFECTS_NOTE, MARGIN_NOTE, PROTOCOL_NOTE, columns, effects_rows, headers, margin_rows, md_table,
    protocol_note, render, render_effects, table_rows,
)
from mi_bench.results.store import (ResultStore, dump_jsonl, json_safe, load_records, preflight,
                                    records_to_export)

__all__ = [
    "ResultStore", "ResultsError", "dump_jsonl", "json_safe", "load_records", "preflight", "records_to_export",
    "current", "human_check", "judge_names", "leaderboard", "missing_metrics", "section_title",
    "sections", "select", "superseded",
    "baseline_margins", "calibration_attacks", "defense_effects", "verdict",
    "EFFECTS_NOTE", "MARGIN_NOTE", "PROTOCOL_NOTE", "columns", "effects_rows", "headers",
    "margin_rows", "md_table", "protocol_note", "render", "render_effects", "table_rows",
]
