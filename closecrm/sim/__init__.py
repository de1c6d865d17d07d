"""A local Close API simulator: the ground truth every test and benchmark runs against."""

from closecrm.sim.config import SimConfig
from closecrm.sim.server import SimServer

__all__ = ["SimConfig", "SimServer"]
