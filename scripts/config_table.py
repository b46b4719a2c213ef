"""Print the README's configuration table, generated from what config/settings.py reads.

    python scripts/config_table.py    # paste between the config-table markers in README.md
The test suite fails when README.md and this output differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import config.settings  # noqa: E402,F401  (reading the settings declares every variable)
from config.env import configuration_table  # noqa: E402

if __name__ == "__main__":
    print(configuration_table(), end="")
