"""What a search tells its user: the trial records and the chosen trial
(:mod:`~extune.search.reporting.results`), the live console
(:mod:`~extune.search.reporting.console`), Optuna's plots (:mod:`~extune.search.reporting.plots`),
the summary files (:mod:`~extune.search.reporting.summary`) and the exported config
(:mod:`~extune.search.reporting.export`)."""
