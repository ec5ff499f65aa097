"""What bench/compare_<data>.py share: run ``cnncodes.compare`` once, time it, and write the
table as Markdown (with the machine, the load and the notes) and as CSV to bench/results/.

The CSV is the table exactly as ``cnncodes compare --format csv`` prints it (other tools,
such as the strategy advisor's validation, read it); the Markdown adds the context.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from cnncodes.studies.compare import compare
from cnncodes.studies.report import format_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

__all__ = ["ROOT", "RESULTS", "run_compare"]


def run_compare(name: str, title: str, intro: str, extra_notes: list[str], *, work: Path,
                command: str, **options: Any) -> Any:
    """``compare(**options)``; writes ``compare_<name>.md``, ``.csv`` and ``_curves.png``."""
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = compare(out=str(work / "compare"), progress=True, **options)
    total = time.perf_counter() - started
    load_after = os.getloadavg()

    RESULTS.mkdir(parents=True, exist_ok=True)
    curves = RESULTS / f"compare_{name}_curves.png"
    shutil.copyfile(result.curves_path, curves)
    (RESULTS / f"compare_{name}.csv").write_text(format_table(result.table, "csv"),
                                                encoding="utf-8")
    table = format_table(result.table, "md")
    lines = [
        f"# {title}", "", f"`{command}`", "", intro, "", table, "",
        *[f"- {note}" for note in result.notes],
        *[f"- {note}" for note in extra_notes],
        f"- Whole comparison: **{total / 60:.1f} minutes** wall time.",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (other jobs shared the cores).",
        "- peak_memory_mib: resident memory of this process, sampled every 50 ms during each "
        "strategy (data loader workers of the extraction not included).",
        f"- Learning curves of strategies 3 and 4: `{curves.relative_to(ROOT)}`; the same "
        f"table as CSV: `bench/results/compare_{name}.csv`.",
        "",
    ]
    (RESULTS / f"compare_{name}.md").write_text("\n".join(lines), encoding="utf-8")
    print(table)
    print(f"\n{total / 60:.1f} min; written to {RESULTS / f'compare_{name}.md'}")
    return result
