"""Fault injection for sweep tests: a model source that dies the way an OOM-killed job does."""

import os
import signal

from jcexp.models import TinyRandomLlama


class KilledOnLoad(TinyRandomLlama):
    """Passes every pre-compute check, then SIGKILLs its own process when the weights would be read."""

    def load(self):
        os.kill(os.getpid(), signal.SIGKILL)
