"""Adapters: the only part of regplug that knows a framework.

One adapter per loop, each wiring the same plugin objects into its framework:

* ``regplug.adapters.torch`` — a plain PyTorch loop (``attach``), plus ``mc_predict``;
* ``regplug.adapters.keras`` — Keras 3 ``model.fit`` (the ``Regularize`` callback), plus
  ``mc_predict``;
* ``regplug.adapters.lightning`` — the Lightning ``Trainer`` (a ``Callback`` over the torch
  adapter's building blocks);
* ``regplug.adapters.transformers`` — the Hugging Face ``Trainer`` (a ``TrainerCallback``,
  also over the torch adapter).

Import the adapter you need; importing this package imports no framework.
Docs: docs/loops/torch.md, docs/loops/keras.md, docs/loops/lightning.md,
docs/loops/transformers.md.
"""
