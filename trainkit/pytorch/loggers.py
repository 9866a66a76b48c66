"""`lightning.pytorch.loggers` on trainkit."""
from trainkit.loggers import *  # noqa: F401,F403 - the same names, one place to add them
from trainkit.loggers import __all__ as __all__  # noqa: PLC0414
