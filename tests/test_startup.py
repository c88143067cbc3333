"""`easyetcon --help` loads every installed plugin but not torch (so it starts in a fraction of a second)."""

import subprocess
import sys

SCRIPT = """
import sys
sys.argv = ["easyetcon", "--help"]
from easyetcon.cli import main
try:
    main()
except SystemExit:
    pass
heavy = sorted(name for name in ("torch", "transformers", "trl", "peft", "datasets") if name in sys.modules)
print("HEAVY", ",".join(heavy), file=sys.stderr)
"""


def test_help_lists_the_plugins_commands_without_importing_torch():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert "eval" in result.stdout and "world" in result.stdout  # the plugins' commands are there
    heavy = result.stderr.rsplit("HEAVY", 1)[1].strip()
    assert heavy == "", f"`easyetcon --help` imported {heavy}; import it inside the function that needs it"
