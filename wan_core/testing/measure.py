"""Measurements for tests and benchmarks: peak resident memory of this process."""

from __future__ import annotations

import threading
from pathlib import Path


class PeakRSS:
    """Peak resident set size from now on: the kernel's VmHWM after a reset, or 1 ms sampling where reset fails."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self._reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            self._peak = self._proc.memory_info().rss
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def peak(self) -> int:
        """Bytes: the highest RSS seen since construction."""
        if self._reset:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        self._stop.set()
        self._thread.join()
        return self._peak
