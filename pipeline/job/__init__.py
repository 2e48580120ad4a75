"""The steps of one job: baseline, calibration, candidates, the search loop, resume and the
final report. Plain functions the flow's tasks call; nothing here parses a job spec."""
