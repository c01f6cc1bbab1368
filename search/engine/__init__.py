"""The search engine: Ray Tune runs the trials, Optuna samples them, ASHA stops the weak ones.

:mod:`~extune.search.engine.run` (``run_search``: the Tuner, resume, the end of a search),
:mod:`~extune.search.engine.trainable` (what a Ray worker runs for a trial),
:mod:`~extune.tracking.trials` (what describes a trial: its config keys, Config, name,
metrics and error), :mod:`~extune.search.engine.optuna_search` (the searcher that records
pruned and failed trials as such), :mod:`~extune.search.engine.resources` (CPUs and GPUs per
trial), :mod:`~extune.search.engine.budget` (a budget in trial-epochs) and
:mod:`~extune.search.engine.disk` (a disk that fills).
"""
