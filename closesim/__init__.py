"""A local Close API simulator: the ground truth every test and benchmark runs against."""

from closesim.config import SimConfig
from closesim.server import SimServer

__all__ = ["SimConfig", "SimServer"]
