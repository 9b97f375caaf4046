#!/usr/bin/env python3
"""Fails (exit 1) if a line of a header under the given directory is longer than the limit.

Columns are Unicode code points, as clang-format counts them: the doc comments hold math (ε, ←).
Usage: check_line_length.py DIR [LIMIT]
"""
import pathlib
import sys


def main() -> int:
    root = pathlib.Path(sys.argv[1])
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 110
    long_lines = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".hpp", ".h", ".cuh", ".inc") or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if len(line) > limit:
                long_lines.append(f"{path}:{number}: {len(line)} columns")
    for entry in long_lines:
        print(entry)
    print(f"{len(long_lines)} line(s) over {limit} columns under {root}")
    return 1 if long_lines else 0


if __name__ == "__main__":
    sys.exit(main())
