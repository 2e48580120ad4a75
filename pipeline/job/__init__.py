"""The steps of one job: baseline, the probe lent to the learners' search aids, candidates
and screenings, the search loop, resume and the final report. Plain functions the flow's
tasks call; nothing here parses a job spec."""
