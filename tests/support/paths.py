"""Where the repository is: the working directory of every process a test starts."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
