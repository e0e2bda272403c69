"""The settings table of docs/configuration.md, generated from worker/settings.py.

python tools/settings_table.py           # print it
python tools/settings_table.py --write   # put it into docs/configuration.md
python tools/settings_table.py --check   # exit 1 when the docs differ (the test suite does this)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.settings import markdown_table  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
BEGIN = "<!-- settings table: generated from worker/settings.py by tools/settings_table.py --write -->\n"
END = "<!-- end of the settings table -->\n"


def with_table(doc: str) -> str:
    head, begin, rest = doc.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not (begin and end):
        raise SystemExit(f"{DOC}: the markers of the settings table are missing")
    return head + BEGIN + markdown_table() + END + tail


def main(argv: list[str]) -> int:
    doc = DOC.read_text()
    if "--write" in argv:
        DOC.write_text(with_table(doc))
    elif "--check" in argv:
        if with_table(doc) != doc:
            print(f"{DOC} is not what worker/settings.py says: run python tools/settings_table.py --write")
            return 1
    else:
        print(markdown_table(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
