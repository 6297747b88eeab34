"""Copy the latest tables from bench/results/<name>.md into docs/performance.md, between its
`<!-- bench:<name>:begin -->` and `<!-- bench:<name>:end -->` markers. The prose around them is written by hand.

    python -m bench.render
"""

from __future__ import annotations

import re

from bench.common import RESULTS, ROOT

DOC = ROOT / "docs" / "performance.md"


def main() -> None:
    text = DOC.read_text()
    for name in re.findall(r"<!-- bench:(\w+):begin -->", text):
        table = RESULTS / f"{name}.md"
        if not table.exists():
            continue
        body = "\n".join(table.read_text().splitlines()[2:]).strip()  # drop the "### name" heading
        text = re.sub(
            rf"(<!-- bench:{name}:begin -->).*?(<!-- bench:{name}:end -->)",
            lambda m, body=body: f"{m.group(1)}\n{body}\n{m.group(2)}",
            text,
            flags=re.S,
        )
    DOC.write_text(text)


if __name__ == "__main__":
    main()
