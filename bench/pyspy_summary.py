"""Summarise py-spy's collapsed stacks (``py-spy record --format raw``): where a process's CPU goes.

    .venv/bin/python bench/pyspy_summary.py FILE [FILE ...] [--top 25] [--match montage_streams]

Prints the share of samples per function as the innermost frame (self) and anywhere on the
stack (inclusive, counted once per sample), functions named "name (file)" without line numbers.
py-spy samples only threads that run (no ``--idle``), so the shares are of CPU-busy samples.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    return _LINE.sub(")", frame.strip())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", default="", help="inclusive list: only functions whose name contains this")
    a = p.parse_args()
    self_: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for f in a.files:
        for line in f.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            count = int(n)
            frames = [frame_name(x) for x in stack.split(";")]
            total += count
            self_[frames[-1]] += count
            for name in set(frames):
                incl[name] += count
    print(f"{total} samples")
    print("\nself (innermost frame):")
    for name, c in self_.most_common(a.top):
        print(f"  {100 * c / total:5.1f}%  {name}")
    print("\ninclusive:")
    shown = 0
    for name, c in incl.most_common():
        if a.match and a.match not in name:
            continue
        print(f"  {100 * c / total:5.1f}%  {name}")
        shown += 1
        if shown >= a.top:
            break


if __name__ == "__main__":
    main()
