"""`lightning.pytorch.callbacks` on trainkit: the Callback base and trainkit's built-in callbacks."""
from trainkit.callbacks import *  # noqa: F401,F403 - the same names, one place to add them
from trainkit.callbacks import __all__ as _builtin
from trainkit.engine.callback import Callback

__all__ = ["Callback", *_builtin]
