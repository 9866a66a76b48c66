"""The workers' fork server imports this one module before it serves (its whole preload): every
module of `forkserver.PRELOAD`, with the garbage collector paused and then frozen
(trainkit.frozen_imports), so that the workers forked from it start without walking, or copying,
the pages of the objects they only read."""
from trainkit.frozen_imports import import_frozen
from trainkit.launch.forkserver import PRELOAD

import_frozen(PRELOAD)
