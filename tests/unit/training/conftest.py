"""The tiny-model fixtures (loaded once per session) for the training unit tests."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.helpers.models import loaded_text  # noqa: E402, F401
