"""The benchmarks run as scripts from this directory and import their helpers by module name
(``harness``, ``migration_data``); their unit tests import them the same way."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
