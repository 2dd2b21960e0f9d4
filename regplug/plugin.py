"""The optional base class of plugins.

Docs: docs/plugin-guide.md
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from .hookspecs import implemented_hooks

#: What a plugin can declare it needs from an adapter, in its ``requires`` attribute. An
#: adapter that cannot provide one refuses the plugin when training starts, with a message
#: naming the plugin and the capability, instead of running it wrongly.
CAPABILITIES: dict[str, str] = {
    "eager_step": "on_loss, on_before_step and on_step run as Python code at every optimizer "
                  "update (not once, while a compiled train step is traced), e.g. to count "
                  "steps or read values on the host",
    "dropout_layers": "run.dropout_layers() hands out the model's dropout layers",
    "model_state": "run.model_state snapshots and restores the whole model state "
                   "(parameters and buffers)",
    "trial_training": "run.trial_training trains the model on one fixed batch with every other "
                      "plugin and dropout switched off, then restores model, optimizer and "
                      "random state exactly",
}


#: Capabilities renamed since 0.1.0, old name → new name (the old one still works, with a
#: ``DeprecationWarning``). A capability is named after the ``Run`` attribute serving it.
RENAMED_CAPABILITIES: dict[str, str] = {"batch_training": "trial_training"}


def snake_case(name: str) -> str:
    """``DecoupledWeightDecay`` → ``decoupled_weight_decay``; ``L2`` → ``l2``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class Plugin:
    """Base class for regplug plugins; any object with hook methods works too.

    Gives a readable ``name`` (used in logs and error messages), ``state_dict`` /
    ``load_state_dict`` that subclasses extend, and :meth:`hooks`.

    >>> import regplug
    >>> class CountSteps(regplug.Plugin):
    ...     def __init__(self):
    ...         self.steps = 0
    ...     @regplug.hookimpl
    ...     def on_step(self, run, step):
    ...         self.steps += 1
    ...     def state_dict(self):
    ...         return {"steps": self.steps}
    ...     def load_state_dict(self, state):
    ...         self.steps = state["steps"]
    >>> CountSteps().name, CountSteps().hooks()
    ('count_steps', ('on_step',))

    A plugin whose per-update hooks (``on_loss``, ``on_before_step``, ``on_step``) are hot may
    also define ``prepare_hooks(run)``: a mapping from those hook names to functions of no
    argument that do what the hook does for ``run`` at the moment they are called, built once
    per run (after ``on_train_begin``; it may be asked more than once: return the same
    functions). The step window of the PyTorch, Lightning and Hugging
    Face adapters calls them instead of dispatching the hook, in the same order among the
    plugins, which spares the dispatch and the hook's own lookups at every update; Keras'
    traced step and everything else call the hooks. Let the hook call the prepared function
    (the built-in parameter plugins do), so the two cannot differ.
    """

    #: Used in logs and messages; defaults to the class name in snake case. A subclass may
    #: set its own, an instance may be renamed (two ``L2`` on different layers, say).
    name: str = "plugin"

    #: Adapter capabilities the plugin cannot work without (keys of :data:`CAPABILITIES`),
    #: e.g. ``("eager_step",)``. Plugins written only against ``run.ops`` and scheduled
    #: values need none. Any object may carry this attribute; the base class says "none".
    requires: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = snake_case(cls.__name__)

    def hooks(self) -> tuple[str, ...]:
        """The hooks this plugin implements."""
        return implemented_hooks(self)

    def state_dict(self) -> dict[str, Any]:
        """The plugin's mutable state, to store in a checkpoint (plain Python values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{self.name}: this plugin keeps no state, but the checkpoint "
                             f"holds {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_requirements(plugins: Iterable[object], provided: Mapping[str, str | None], *,
                       adapter: str) -> None:
    """Refuse, before training starts, a plugin that needs what the adapter cannot provide.

    :param provided: every capability of :data:`CAPABILITIES` mapped to ``None`` when the
        adapter provides it, or to the reason (and remedy) why it cannot.
    :param adapter: how messages name the adapter, e.g. ``"the Keras adapter"``.
    """
    from .errors import UnsupportedPluginError
    from .manager import plugin_label

    for plugin in plugins:
        needs = getattr(plugin, "requires", ()) or ()
        for need in (needs,) if isinstance(needs, str) else tuple(needs):
            label = plugin_label(plugin)
            if need in RENAMED_CAPABILITIES:
                new = RENAMED_CAPABILITIES[need]
                warnings.warn(f"{label}: requires {need!r}, the old name of capability "
                              f"{new!r} (the name of run.{new}); write requires = ({new!r},)",
                              DeprecationWarning, stacklevel=2)
                need = new
            if need not in CAPABILITIES:
                raise UnsupportedPluginError(
                    f"{label}: requires {need!r}, a capability regplug does not know (known: "
                    f"{', '.join(CAPABILITIES)}), so {adapter} cannot promise to serve it")
            reason = provided.get(need, f"{adapter} cannot provide it")
            if reason is not None:
                raise UnsupportedPluginError(
                    f"{label}: requires {need!r} ({CAPABILITIES[need]}), but {reason}")
