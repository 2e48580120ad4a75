"""A failed screening says why in the job's log, each distinct error once."""

from pipeline.job.twofidelity import TwoFidelity
from pipeline.records.results import ScreeningResult


def test_failed_screenings_show_their_error_once_with_a_count():
    lines: list[str] = []
    loop = TwoFidelity.__new__(TwoFidelity)  # only the log and the rows are needed here
    loop.log = lines.append
    loop.screenings = []
    error = "RuntimeError: onnxruntime could not quantise (calibration=percentile): inf range\n  at"
    rows = [ScreeningResult(index=i, params={}, status="failed", error=error) for i in range(3)] + [
        ScreeningResult(index=3, params={}, accuracy=0.9, achieved=1.5)
    ]
    loop._log_chunk(rows)
    shown = [line for line in lines if "screening failed" in line]
    assert shown == [
        "  screening failed (3x): RuntimeError: onnxruntime could not quantise "
        "(calibration=percentile): inf range"
    ]
