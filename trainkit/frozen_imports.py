"""Start-up's big imports with the cyclic garbage collector paused, then frozen.

`import torch` and what follows it (torch._dynamo, the engine) create hundreds of thousands of
objects that live as long as the process (171,000 that the collector tracks after `import torch`):
modules, classes, functions. While they are created, the collector walks every one of them again
each time their number grows by a quarter: 0.6 to 0.8 s of a 3.3 s `import torch, torch._dynamo`
on this project's 2-core machine, for little to collect. Importing them with the collector paused
and then freezing them (`gc.freeze`: later collections skip them) costs none of that, and a process
forked afterwards (a fork server's workers, a DataLoader's) does not write to those objects' pages
when it collects, so they stay shared.

The little cyclic garbage those imports leave is frozen with them rather than collected: after
`import torch`, 7,036 objects of about 640 KiB (tuples, cells, functions), where a full collection
would cost 0.14 s.

Only for processes trainkit owns from the start (the CLI's command, the workers' fork server): a
frozen object in a reference cycle is never collected (reference counting still frees the others),
which is right for modules and wrong in a caller's long-lived process.
"""
from __future__ import annotations

import gc
import importlib


def import_frozen(names: list[str]) -> None:
    """Import `names` with the collector paused, then freeze everything alive (the collector is on
    again afterwards where it was before). An import that fails raises, as `import` does."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in names:
            importlib.import_module(name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
