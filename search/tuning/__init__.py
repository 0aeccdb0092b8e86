"""Tuning: studies, the objective, the shared trial budget, workers and the launcher.

`outcomes` says how a trial ended and reads results back; `settings` holds what a study
is run with (its data settings, fixed for its life, and the latest run's settings);
`samplers` gives every trial its own random stream; `pruners` compare a trial only with
trials of its own epoch budget; `study` creates or resumes a study with its space,
budget and settings; `budget` places a run's trials in the study as WAITING slots;
`objective` turns one trial into a sampled, budget-checked, trained and recorded run;
`worker` claims and runs trials with a heartbeat; `slots` plans the worker processes of
one machine (GPUs, workers per GPU) and `launcher` runs and watches them; `checks`
refuses a bad request before anything is written; `requests` and `running` are the
data and the running of a session; `session` is what `autosearch start` and
`autosearch worker` do, callable without the command line.
"""
