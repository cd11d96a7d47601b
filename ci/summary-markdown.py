#!/usr/bin/env python3
"""A matrix's summary.json as Markdown (for $GITHUB_STEP_SUMMARY, a merge request comment...): the verdict grid,
each cell its verdict against the expected one, green or red, then the totals and why each red cell is red.
Standard library only.

    python3 ci/summary-markdown.py matrix-all/summary.json >> "$GITHUB_STEP_SUMMARY"
"""
import itertools
import json
import sys


def cell_text(c):
    if c is None:
        return "–"  # excluded from the matrix
    return f"{'✅' if c['ok'] else '❌'} {c['verdict']} (expected {c['expected']})"


def markdown(summary):
    axes = summary["axes"]  # axis -> labels, in matrix order
    names = list(axes)
    by_values = {tuple(c["values"][a] for a in names): c for c in summary["cells"]}
    t = summary["totals"]
    verdict = "green" if t["cells"] and not t["red"] else "RED"
    out = [f"## Matrix {summary['name']}: {verdict}", "",
           f"{t['green']} of {t['cells']} cells green, {t['red']} red "
           f"(PASS {t['PASS']}, FAIL {t['FAIL']}, ERROR {t['ERROR']}); a cell is green when its verdict is the "
           "expected one.", ""]
    # Rows: every combination of all axes but the last; columns: the last axis's values.
    rows, cols = names[:-1], names[-1]
    out.append("| " + " | ".join(rows or ["cell"]) + " | " + " | ".join(f"{cols}={v}" for v in axes[cols]) + " |")
    out.append("|" + "---|" * (max(len(rows), 1) + len(axes[cols])))
    for combo in itertools.product(*(axes[a] for a in rows)):
        cells = [cell_text(by_values.get(combo + (v,))) for v in axes[cols]]
        out.append("| " + " | ".join(combo or ("",)) + " | " + " | ".join(cells) + " |")
    red = [c for c in summary["cells"] if not c["ok"]]
    if red:
        out += ["", "Red cells:", ""] + [f"- `{c['id']}`: {c['why_red']} ({c['run_dir'] or 'no run directory'})"
                                         for c in red]
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        sys.stdout.write(markdown(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
