"""The search: spaces, training, tuning, results and the command line, in five rooms.

Dependencies point one way, from the commands down:

    cli  ->  results, tuning  ->  space, training  ->  models, storage

`space` says what a study may try and turns a trial's parameters into a network and a
recipe; `training` trains one network (pure: no Optuna, no storage); `tuning` runs
studies, the objective, workers and the launcher; `results` draws, reports and exports
what a study found; `cli` is the `autosearch` command line. `api/` is installed as the
top-level `autosearch` package, the public face. See ARCHITECTURE.md.
"""
