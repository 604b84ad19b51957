"""Reads the table benches/disk-ceiling.sh writes (ceiling-report.txt), for the reports of
native-bench.sh and guest-bench.sh (imported from their inline Python)."""
import re


def read(path):
    """(figures, table lines): figures maps each job's first word to (in-place, log), from
    rows `| job | unit | in-place | log (best case) | ceiling | ...` whose numbers separate
    thousands with spaces; the lines are the table as printed."""
    figures, table = {}, []
    for line in open(path):
        if line.startswith("|"):
            table.append(line.rstrip())
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and re.fullmatch(r"[\d ]+", cells[2] or "x") and re.fullmatch(r"[\d ]+", cells[3] or "x"):
            figures[cells[0].split()[0]] = (float(cells[2].replace(" ", "")), float(cells[3].replace(" ", "")))
    return figures, table
