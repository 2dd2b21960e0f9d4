"""``regplug tune``: search the strength of regularization strategies with Optuna."""
