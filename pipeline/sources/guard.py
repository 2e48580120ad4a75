"""User code (model factories, data callables, a model's forward, ``evaluate``, ``loss``)
run so that its attempts to end the process become one clear error instead.

``sys.exit(0)`` in a factory used to end the job with exit 0 ("met") and no summary; a
``KeyboardInterrupt`` it raised was reported as a Ctrl-C; ``os._exit(7)`` ended the job
with no word. Under ``guarded`` they raise ``UserCodeExit`` naming the code and what it
did; the CLI reports that as bad input (exit 2).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# compressflow's own packages: an os._exit they call (a second Ctrl-C) is never stopped.
OWN_PACKAGES = ("pipeline", "learners", "hpo")


class UserCodeExit(ValueError):
    """User code tried to end the process; the message names the code and its exit."""


class _HardExit(BaseException):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _exit_text(err: SystemExit) -> str:
    code = err.code
    if isinstance(code, str):  # sys.exit("message"): the message is the user's reason
        return f"exited: {code}"
    return f"called sys.exit({code!r})"


def _real_ctrl_c() -> bool:
    """A KeyboardInterrupt comes from the terminal only while Python's default SIGINT
    handler is in place; with the job's own handler installed, user code raised it."""
    return signal.getsignal(signal.SIGINT) is signal.default_int_handler


@contextmanager
def guarded(what: str, hard_exit: bool = False) -> Iterator[None]:
    """Run user code described by ``what`` (e.g. "model factory pkg.mod:fn"):
    ``SystemExit`` and a ``KeyboardInterrupt`` it raises become ``UserCodeExit``. With
    ``hard_exit`` (single-threaded phases such as preflight only: the patch is
    process-wide) an ``os._exit`` it calls does too."""
    real_exit, here = os._exit, os.getpid()

    def refused(code: int) -> None:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        # A forked child (a data loader worker) ends as it always does.
        if caller.split(".")[0] in OWN_PACKAGES or os.getpid() != here:
            real_exit(code)
        raise _HardExit(code)

    if hard_exit:
        os._exit = refused  # type: ignore[assignment]
    try:
        yield
    except _HardExit as err:
        raise UserCodeExit(f"{what} called os._exit({err.code}) (stopped here)") from None
    except SystemExit as err:
        raise UserCodeExit(f"{what} {_exit_text(err)}: user code may not end the job") from None
    except KeyboardInterrupt:
        if _real_ctrl_c():
            raise
        raise UserCodeExit(f"{what} raised KeyboardInterrupt (not a Ctrl-C)") from None
    finally:
        if hard_exit:
            os._exit = real_exit


def call_guarded(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` under ``guarded(what)``."""
    with guarded(what):
        return fn(*args, **kwargs)
