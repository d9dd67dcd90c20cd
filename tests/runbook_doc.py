"""The statements docs/runbook.md prints for a human to run, found by the section's heading."""

from __future__ import annotations

import re
from pathlib import Path

RUNBOOK = Path(__file__).resolve().parent.parent / "docs" / "runbook.md"


def section(heading: str) -> str:
    """The text under `### heading` (or `## heading`), up to the next heading of any level."""
    text = RUNBOOK.read_text()
    match = re.search(rf"^#{{2,3}} {re.escape(heading)}\n(.*?)(?=^#{{2,3}} |\Z)", text, re.M | re.S)
    if match is None:
        raise LookupError(f"docs/runbook.md has no section {heading!r}")
    return match.group(1)


def sql_blocks(heading: str) -> list[str]:
    """The ```sql blocks of that section, in order, as a reader copies them."""
    return re.findall(r"^```sql\n(.*?)^```", section(heading), re.M | re.S)
