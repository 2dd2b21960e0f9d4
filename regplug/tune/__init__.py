"""``regplug tune``: search the strength of regularization strategies with Optuna.

The command on top of :mod:`regplug.experiment` (strategies, data, models, the frameworks'
runners, output folders): its command line (:mod:`.cli`), what it searches per strategy
(:mod:`.strategy_space`), the search itself (:mod:`.search`), where the studies are kept
(:mod:`.storage`), its errors (:mod:`.errors`), and its files, figures and report
(:mod:`.output`, :mod:`.plots`, :mod:`.report`).

Docs: docs/tune.md
"""
