"""TensorFlow imported without its native start-up notices on stderr.

TensorFlow 2.21 logs from C++ through Abseil before Abseil's logging is set up, so the notices it
prints while it is imported ("WARNING: All log messages before absl::InitializeLog() ...",
"I0000 ... port.cc:153] oneDNN custom operations are on ...") ignore ``TF_CPP_MIN_LOG_LEVEL``.
They would come before every ``slice2d`` message, error lines included. ``import_tensorflow``
imports TensorFlow with the process's stderr (file descriptor 2) passed through a filter
that drops those lines, by the level ``TF_CPP_MIN_LOG_LEVEL`` asks (``slice2d``'s command line sets
2: information and warnings), and passes everything else on at once, in order, whichever thread
wrote it. ``release`` ends a filter still running (the process is about to end).
"""

from __future__ import annotations

import os
import re
import sys
import threading

# An Abseil log line: severity letter, date, time, thread, file:line]
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\] ")
_HEAD = re.compile(rb"[IWEF][0-9 :.]*")  # the start of a notice, before its file name
_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = b"IWEF"  # the levels 0-3 of TF_CPP_MIN_LOG_LEVEL
_active: _Filter | None = None
_lock = threading.Lock()  # one import at a time
_swap = threading.Lock()  # one release at a time


def _min_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def is_notice(line: bytes, min_level: int) -> bool:
    """Whether a whole stderr line (without its newline) is a native notice below ``min_level``."""
    if line.rstrip(b"\r") == _PREAMBLE:
        return min_level > 0
    match = _ABSL_LINE.match(line)
    return bool(match) and _SEVERITY.index(match.group(1)) < min_level


def _could_become_notice(start: bytes) -> bool:
    """Whether an unfinished line could still turn out to be a notice (so it waits for its end)."""
    return (_PREAMBLE.startswith(start.rstrip(b"\r")) or bool(_HEAD.fullmatch(start))
            or bool(_ABSL_LINE.match(start)))


class _Filter:
    """Stderr (fd 2) through a pipe and a relay thread that drops notices."""

    def __init__(self) -> None:
        self.min_level = _min_level()
        if sys.stderr is not None:
            sys.stderr.flush()
        self.target = os.dup(2)
        self.read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.relay = threading.Thread(target=self._relay, name="slice2d-stderr", daemon=True)
        self.relay.start()

    def _relay(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.read_end, 65536)
            except OSError:  # closed by ``close`` after its wait
                break
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not is_notice(line, self.min_level))
            if pending and not _could_become_notice(pending):
                out, pending = out + pending, b""
            if out:
                os.write(self.target, out)
        if pending and not is_notice(pending, self.min_level):
            os.write(self.target, pending)

    def close(self) -> None:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(self.target, 2)  # the pipe's last writer is gone: the relay reads to its end
        self.relay.join(timeout=10)  # unless a child process still holds the pipe
        os.close(self.read_end)
        os.close(self.target)


def import_tensorflow() -> None:
    """Import TensorFlow (once per process) without its start-up notices on stderr."""
    global _active
    if "tensorflow" in sys.modules:
        return
    with _lock:
        try:  # no filter when the user asked for every message, or where there is no stderr
            _active = _Filter() if _min_level() > 0 else None
        except OSError:  # closed file descriptor 2
            _active = None
        try:
            import tensorflow  # noqa: F401
        finally:
            release()


def release() -> None:
    """End the filter if one is running, passing on what it holds (before the process ends)."""
    global _active
    with _swap:
        active, _active = _active, None
    if active is not None:
        active.close()
