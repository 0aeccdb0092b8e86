"""Tuning: studies, the objective, the shared trial budget, workers and the launcher.

`outcomes` says how a trial ended and reads results back; `study` makes samplers and
pruners and creates or resumes a study with its stored settings; `budget` places a
run's trials in the study as WAITING slots; `objective` turns one trial into a sampled,
budget-checked, trained and recorded run; `worker` claims and runs trials with a
heartbeat; `launcher` runs several worker processes on this machine; `checks` refuses a
bad request before anything is written; `session` is what `autosearch start` and
`autosearch worker` do, callable without the command line.
"""
