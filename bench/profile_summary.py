"""Summarise a py-spy "raw" (collapsed stacks) profile: the functions that take the time.

    python bench/profile_summary.py PROFILE.txt [--top 25] [--match loyalty_ledger]

Prints the top functions by inclusive share (on the stack) and by self share (on top of the
stack), as a share of all samples. Idle samples (the event loop waiting in epoll) are
counted too, so "idle" says how much of the window the server's main thread had nothing to do.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\\d+))?\)$")


def short(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="", help="only frames whose text contains this")
    args = parser.parse_args()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in Path(args.profile).read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [short(f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    print(f"{total:,} samples")
    for title, table in (("inclusive", inclusive), ("self", own)):
        print(f"-- top {args.top} by {title} share")
        shown = 0
        for frame, count in table.most_common():
            if args.match and args.match not in frame:
                continue
            print(f"{100 * count / total:6.1f}%  {frame}")
            shown += 1
            if shown >= args.top:
                break


if __name__ == "__main__":
    main()
