"""tests/conftest.py's end-of-session summary counts the skips by reason."""
from types import SimpleNamespace

import conftest


class Reporter:
    def __init__(self, skipped):
        self.stats, self.lines = {"skipped": skipped}, []

    def write_sep(self, sep, title):
        self.lines.append(title)

    def write_line(self, line):
        self.lines.append(line)


def skip(reason):
    return SimpleNamespace(longrepr=("tests/x.py", 1, f"Skipped: {reason}"))


def test_skips_are_counted_by_reason_and_importorskip_is_shortened():
    rep = Reporter([skip("CuPy with a GPU is not available")] * 3
                   + [skip("could not import 'torch': No module named 'torch'")] * 2
                   + [skip("could not import 'timm': No module named 'timm'")])
    conftest.pytest_terminal_summary(rep, 0, None)
    assert rep.lines == ["6 skipped, by reason", "     3 skipped: CuPy with a GPU is not available",
                         "     2 skipped: torch not installed", "     1 skipped: timm not installed"]


def test_no_skips_no_summary():
    rep = Reporter([])
    conftest.pytest_terminal_summary(rep, 0, None)
    assert rep.lines == []
