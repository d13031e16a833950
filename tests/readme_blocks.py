"""README's ```python blocks as runnable scripts (used by test_readme.py and test_install.py).

A line `expression  # -> expected` also checks the expression's repr against `expected`, where
`...` stands for anything (as doctest's ELLIPSIS). In small mode (SMALL) the slow calls get
smaller inputs, never on a checked line.
"""
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FULL = os.environ.get("MHMODELS_TEST_FULL") == "1"
CHECK = re.compile(r"^(?P<indent>\s*)(?P<expr>[^#\s][^#]*?)\s*#\s*->\s*(?P<expected>.+?)\s*$")
SMALL = {"(96, 96, 3)": "(32, 32, 3)"}

CHECKER = '''
import re as _re
def _check(value, expected, line):
    pattern = ".*".join(_re.escape(part) for part in expected.split("..."))
    if not _re.fullmatch(pattern, repr(value), _re.S):
        raise AssertionError(f"README line {line}: expected {expected}, got {value!r}")
'''


def python_blocks(readme: Path = REPO / "README.md") -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block of README.md."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(readme.read_text().splitlines(), 1):
        if current is None and line.strip() == "```python":
            current, start = [], number + 1
        elif current is not None and line.strip() == "```":
            blocks.append((start, "\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def runnable(block: tuple[int, str], small: bool = not FULL) -> str:
    """The block as a script: checked lines assert their result; small mode shrinks inputs."""
    start, code = block
    out = [CHECKER]
    for offset, line in enumerate(code.splitlines()):
        match = CHECK.match(line)
        if match:
            out.append(f"{match['indent']}_check({match['expr']}, {match['expected']!r}, "
                       f"{start + offset})")
            continue
        if small:
            for old, new in SMALL.items():
                line = line.replace(old, new)
        out.append(line)
    return "\n".join(out) + "\n"
