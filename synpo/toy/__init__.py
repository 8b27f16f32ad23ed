"""The embedded toy world and tiny model shipped with synpo (see DESIGN.md section 3)."""

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
TINY_MODEL = ASSETS / "tiny-llama"
DATA = ASSETS / "data"
