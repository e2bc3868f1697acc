"""The fuzz suite's table: cases tried per loader (one row each) and category, printed at the end of the session."""

from __future__ import annotations

from fuzz_testing import FUZZ_COUNTS


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the loader fuzz counts (rows: loaders, columns: categories) whenever the fuzz suite ran."""
    if not FUZZ_COUNTS:
        return
    categories = sorted({c for counts in FUZZ_COUNTS.values() for c in counts})
    width = max(len(name) for name in FUZZ_COUNTS)
    terminalreporter.section("loader fuzz cases (each refused with our clear error, nothing outside opened)")
    terminalreporter.write_line(" " * width + "".join(f"{c:>14}" for c in categories) + f"{'total':>8}")
    for name, counts in FUZZ_COUNTS.items():
        cells = "".join(f"{counts.get(c, 0) or '-':>14}" for c in categories)
        terminalreporter.write_line(f"{name:<{width}}{cells}{sum(counts.values()):>8}")
    total = sum(sum(c.values()) for c in FUZZ_COUNTS.values())
    terminalreporter.write_line(f"{'all':<{width}}" + " " * 14 * len(categories) + f"{total:>8}")
