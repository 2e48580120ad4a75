"""The guard around user code: exits it attempts become ``UserCodeExit``; a real Ctrl-C
and compressflow's own ``os._exit`` are left alone."""

from __future__ import annotations

import os
import re
import signal
import sys

import pytest

from pipeline.sources.guard import UserCodeExit, call_guarded, guarded


def _job_handler(signum, frame):  # stands in for the job's own SIGINT handler
    raise AssertionError("not called")


@pytest.fixture
def job_sigint():
    previous = signal.signal(signal.SIGINT, _job_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    ("exit_", "said"),
    [
        (lambda: sys.exit(0), "called sys.exit(0)"),
        (lambda: sys.exit("no licence"), "exited: no licence"),
        (lambda: sys.exit(None), "called sys.exit(None)"),
    ],
)
def test_sys_exit_in_user_code_is_an_error_naming_it(exit_, said):
    with pytest.raises(UserCodeExit, match=re.escape(f"model factory m:f {said}")):
        call_guarded("model factory m:f", exit_)


def test_keyboard_interrupt_from_user_code_is_not_a_ctrl_c(job_sigint):
    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(UserCodeExit, match="raised KeyboardInterrupt"):
        call_guarded("loss m:f", interrupt)


def test_with_pythons_own_sigint_handler_a_keyboard_interrupt_stays_one():
    def interrupt():
        raise KeyboardInterrupt

    # Set here: a shell's background job starts with SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            call_guarded("loss m:f", interrupt)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_os_exit_from_user_code_is_stopped_and_os_exit_restored():
    real = os._exit
    user_module = {"__name__": "users_package.models"}
    hard_exit = eval("lambda: __import__('os')._exit(7)", user_module)  # a frame of theirs
    with pytest.raises(UserCodeExit, match=r"called os\._exit\(7\)"), guarded("m", hard_exit=True):
        hard_exit()
    assert os._exit is real
    with pytest.raises(UserCodeExit, match="sys.exit"), guarded("m"):
        sys.exit(1)
    assert os._exit is real


def test_other_errors_pass_through_unchanged():
    with pytest.raises(ZeroDivisionError):
        call_guarded("evaluate m:f", lambda: 1 / 0)
