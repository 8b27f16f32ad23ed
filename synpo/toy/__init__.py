"""The embedded toy world and tiny model shipped with synpo; the toy world is described in synpo/toy/world.py."""

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
TINY_MODEL = ASSETS / "tiny-llama"
DATA = ASSETS / "data"
