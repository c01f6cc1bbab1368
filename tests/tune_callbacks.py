"""Ray Tune callbacks the search tests share."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ray.tune import Callback


class InterruptOnce(Callback):
    """Sends the stop signal Tune handles (like Ctrl-C) when the first trial ends, once: the
    file ``flag`` remembers it was sent, so a resumed search in the same test runs on."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not os.path.exists(self.flag):
            Path(self.flag).write_text("sent")
            os.kill(os.getpid(), signal.SIGUSR1)
