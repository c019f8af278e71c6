"""Corpora behind one interface: aligned text units per language, fetched once into a cache."""

from .corpus import Unit, split_keys
from .udhr import UDHR

CORPORA = {UDHR.name: UDHR}

__all__ = ["CORPORA", "UDHR", "Unit", "split_keys"]
