#!/usr/bin/env python3
"""Turn the raw TSV of benchmarks/ingest.sh into a Markdown table of medians (valid runs only).

    python3 benchmarks/_stats.py benchmarks/results/ingest-<stamp>.tsv

Cells show "median (min-max)" over the repetitions; the ratio is ours/Orthanc of the median
instances/s; CPU s is the median user+sys of the server processes during the ingest.
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict

# target ratio (ours/Orthanc instances/s) of issue "[1/7] Ingest foundation", per configuration
TARGETS = {"1x1": 1.2, "2x2": 1.5, "import": 2.0}


def label(cfg: str) -> str:
    if cfg == "import":
        return "`pacs import -j 0` (every core) vs Orthanc's 1 association"
    assoc, workers = cfg.split("x")
    a = "1 association" if assoc == "1" else f"{assoc} associations"
    w = "1 SCP process" if workers == "1" else f"{workers} SCP processes"
    return f"{a}, ours {w}"


def cell(values: list[float], digits: int = 1) -> str:
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def busy_processes(cpu_by_pid: str) -> int:
    """Processes of our group, other than the first (the main process), that used >= 1 CPU s.

    With `--dicom-workers N` the main process dispatches each association to the least busy
    worker; this counts how many workers actually did the work (a check of that spreading).
    """
    per = [float(item.split(":")[1]) for item in cpu_by_pid.split(",") if ":" in item]
    return sum(1 for sec in per[1:] if sec >= 1.0)


def main(path: str) -> None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    configs: list[str] = []
    runs: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    invalid: list[dict[str, str]] = []
    for r in rows:
        if r["config"] not in configs:
            configs.append(r["config"])
        if r["valid"] == "1":
            runs[r["config"], r["server"]].append(r)
        else:
            invalid.append(r)

    def col(cfg: str, server: str, key: str) -> list[float]:
        return [float(r[key]) for r in runs[cfg, server]]

    out = [
        "| config | Orthanc inst/s | ours inst/s | ratio | Orthanc MB/s | ours MB/s "
        "| CPU s (Orthanc / ours) | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    notes = []
    for cfg in configs:
        o, p = col(cfg, "orthanc", "inst_s"), col(cfg, "pacs", "inst_s")
        ratio = statistics.median(p) / statistics.median(o) if o and p else None
        target = TARGETS.get(cfg)
        if target is None:
            verdict = "(information)"
        elif ratio is None:
            verdict = f">= {target}x: no valid runs"
        else:
            verdict = f">= {target}x: {'met' if ratio >= target else 'NOT met'}"
        cpu = f"{cell(col(cfg, 'orthanc', 'cpu_s'))} / {cell(col(cfg, 'pacs', 'cpu_s'))}"
        out.append(
            f"| {label(cfg)} | {cell(o)} | {cell(p)} | {'n/a' if ratio is None else f'{ratio:.2f}'} "
            f"| {cell(col(cfg, 'orthanc', 'MB_s'))} | {cell(col(cfg, 'pacs', 'MB_s'))} | {cpu} | {verdict} |"
        )
        # ours/Orthanc within each repetition (the two runs of a pair are adjacent in time)
        by_rep = {r["rep"]: float(r["inst_s"]) for r in runs[cfg, "orthanc"]}
        paired = [float(r["inst_s"]) / by_rep[r["rep"]] for r in runs[cfg, "pacs"] if r["rep"] in by_rep]
        note = (
            f"- {label(cfg)}: valid runs Orthanc {len(o)}, ours {len(p)}; "
            f"ratio within each repetition: {', '.join(f'{x:.2f}' for x in paired) or 'n/a'}"
        )
        if cfg != "import" and int(cfg.split("x")[1]) > 1:
            busy = [str(busy_processes(r["cpu_by_pid"])) for r in runs[cfg, "pacs"]]
            note += f"; SCP processes that took the associations (>= 1 CPU s) per repetition: {', '.join(busy)}"
        notes.append(note)
    for r in invalid:
        notes.append(
            f"- INVALID: rep {r['rep']} {r['config']} {r['server']}: {r['count']} of {r['files']} instances, "
            f"storescu exit {r['scu_rc']}"
        )
    commits = sorted({r["commit"] for r in rows if r["server"] == "pacs"})
    files = rows[0]["files"] if rows else "?"
    size = int(rows[0]["bytes"]) / 1e6 if rows else 0.0
    notes.append(f"- {files} instances, {size:.0f} MB (10^6 bytes) per ingest; pacs commit(s): {', '.join(commits)}")
    sys.stdout.write("\n".join(out) + "\n\n" + "\n".join(notes) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
