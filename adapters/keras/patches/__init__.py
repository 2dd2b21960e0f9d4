"""What regplug traces into a Keras model's train step for one ``fit``, one module per job.

- :mod:`.attachment` — :class:`Attachment`: composes the parts below for one ``fit``;
- :mod:`.loss` — the wrapped ``compute_loss`` (``on_loss`` penalties) and penalty trackers;
- :mod:`.optimizer` — the wrapped ``optimizer.apply`` (``on_before_step``, ``on_step``);
- :mod:`.dropout` — the dropout layers handed to plugins: a ``call`` reading its rate;
- :mod:`.jax_step` — the variables the traced step reads, carried as state on JAX;
- :mod:`.guards` — the running fit's frame and the guards on the model's entry points.

Private Keras API only through ``.._compat``. Docs: ``docs/keras-internals.md``.
"""

from __future__ import annotations

from .attachment import ATTACHED, STEP_HOOKS, Attachment, step_is_eager
from .guards import GUARDED_ENTRY_POINTS
from .optimizer import innermost_optimizer

__all__ = ["Attachment", "step_is_eager", "innermost_optimizer", "ATTACHED", "STEP_HOOKS",
           "GUARDED_ENTRY_POINTS"]
