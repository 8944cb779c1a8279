"""Ctrl-C and SIGTERM for an agent: stop taking trials, end the running one, keep everything measured."""

from __future__ import annotations

import signal
import threading
from typing import Any


def install_signal_handlers(stop: threading.Event) -> None:
    """Ctrl-C / SIGTERM: stop taking trials and end the running one (its worker tree killed)."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: give up waiting
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
