"""MC-dropout predictions of a Keras 3 model: dropout layers sampling, everything else in
inference mode, on the TensorFlow, JAX and torch backends.

``model.predict`` always calls the model with ``training=False``, which switches dropout
off; ``model(x, training=True)`` switches dropout on but also makes ``BatchNormalization``
normalize with batch statistics (and update its moving averages). :func:`mc_predict` calls
the model in inference mode with only the dropout layers sampling, through
``model.stateless_call`` (so sampling writes no variable of the model), traced once per
model, with the deterministic first layers of a chain computed once (prefix reuse). The
statistics and the result type are in :mod:`regplug.uncertainty`.

Docs: docs/plugins/uncertainty.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
from keras import ops

from regplug.uncertainty import (
    MCAccumulator,
    MCPrediction,
    check_mc_arguments,
    deterministic_prefix,
    row_batches,
    sample_chunks,
    warn_if_constant,
)
from regplug.validation import check_bool

from . import _compat
from .discovery import DROPOUT_TYPES, all_layers

__all__ = ["mc_predict", "is_dropout_layer"]

_OWNER = "mc_predict"
_log = logging.getLogger(__name__)

# Compiled forward functions per model, for the last _CONFIGURATIONS configurations it was
# sampled with (whole or split, which layers sample). The functions hold the model only
# through weak references, so the cache never keeps a model alive.
_COMPILED: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[Callable[..., Any], ...]]]
_COMPILED = weakref.WeakKeyDictionary()
_CONFIGURATIONS = 4


def is_dropout_layer(layer: Any) -> bool:
    """Whether :func:`mc_predict` keeps ``layer`` sampling by default.

    ``Dropout`` and its subclasses (``SpatialDropout1D/2D/3D``), ``GaussianDropout``,
    ``AlphaDropout``, and recurrent layers (``LSTM``, ``GRU``, ``SimpleRNN``, …) built with
    ``dropout`` or ``recurrent_dropout`` above 0. The dropout inside ``MultiHeadAttention``
    is a ``Dropout`` sublayer and is found as such.

    >>> is_dropout_layer(keras.layers.Dropout(0.1)), is_dropout_layer(keras.layers.Dense(2))
    (True, False)
    """
    if isinstance(layer, DROPOUT_TYPES):
        return True
    if isinstance(layer, keras.layers.RNN):
        return (float(getattr(layer, "dropout", 0.0) or 0.0) > 0.0
                or float(getattr(layer, "recurrent_dropout", 0.0) or 0.0) > 0.0)
    return False


def mc_predict(model: Any, x: Any, *, samples: int = 30, batch_size: int | None = None,
               samples_per_batch: int | None = None, seed: int | None = None,
               level: float = 0.95, interval: str = "quantile", keep_samples: bool = False,
               is_dropout: Callable[[Any], bool] | None = None,
               compiled: bool = True, reuse_prefix: bool = True) -> MCPrediction:
    """Predict ``x`` ``samples`` times with dropout sampling and summarize the predictions.

    :param model: a Keras model (or layer) returning one tensor whose first axis indexes
        the rows of ``x``. Built on first use if it is not yet.
    :param x: what ``model(x)`` takes: an array or tensor, or a list or dict of them sharing
        their first axis. Floating NumPy arrays are cast to ``keras.config.floatx()``.
    :param samples: T, the number of stochastic forward passes per row (>= 1).
    :param batch_size: rows predicted together (``None``: all of ``x`` at once). With
        ``interval="quantile"`` the samples of one batch are what is held in memory.
    :param samples_per_batch: how many samples one forward pass evaluates, by stacking that
        many copies of the batch; ``None`` stacks as many as fit in
        ``max(batch rows, 1024)`` rows (:data:`regplug.uncertainty.DEFAULT_ROWS_PER_FORWARD`).
        Use 1 for a model whose rows are not independent in inference mode.
    :param seed: an integer gives reproducible samples and leaves every global random state
        alone; ``None`` seeds from Python's ``random`` (see "Seeding" below).
    :param level: coverage of the central interval, in (0, 1).
    :param interval: ``"quantile"`` (empirical quantiles of the samples) or ``"normal"``
        (``mean ± z·std``; needs no stored samples, so memory does not grow with T).
    :param keep_samples: also return the ``(T, N, …)`` samples as ``.samples``.
    :param is_dropout: which layers keep sampling (default :func:`is_dropout_layer`). The
        chosen layers are called with ``training=True``, every other one with
        ``training=False``.
    :param compiled: trace the forward pass (``tf.function``/``jax.jit``); ``False`` runs it
        eagerly, for models whose ``call`` cannot be traced. Ignored on the torch backend.
    :param reuse_prefix: compute the deterministic leading layers of a chain once per row
        block (see "Prefix reuse" below); ``False`` runs the whole model for every sample.
    :returns: an :class:`regplug.uncertainty.MCPrediction` of NumPy float64 arrays.

    A :class:`regplug.RegplugWarning` says when ``samples > 1`` predictions came out all
    identical (no dropout found, or rates of 0).

    Sampling: the ``call`` of each dropout layer is temporarily replaced, on that layer
    instance only, by one that passes ``training=True`` to the original — so the dropout
    layers sample with Keras' own implementation and every other layer stays in inference
    mode. The replacement is removed afterwards, also when the call raises. The forward pass
    runs through ``model.stateless_call``: weights and random-seed states go in as values and
    the new seed states come back out, so sampling writes no variable of the model — not the
    BatchNorm statistics, not the dropout layers' seed generators. With ``compiled=True``
    that function is traced once (``tf.function`` on TensorFlow, ``jax.jit`` on JAX; the
    torch backend runs eagerly) and kept for later calls on the same model. Every forward
    pass of a call has the same shape (the last batch of rows and the smaller chunks of
    samples are padded, and the padding dropped), so a call traces at most once, and
    ``compiled=False`` draws the same dropout masks.

    Prefix reuse: when the model is a ``Sequential`` or a functional model that is a chain
    (one input, one output, each layer fed by the one before) and the input is one tensor of
    the model's input dtype, its leading layers that are provably deterministic while
    sampling — built-in Keras layers in inference mode, with no sampling layer, seed
    generator, instance-level ``call`` or mask inside, and not ``Lambda`` or a wrapper of
    foreign code — run once per row block (a traced function of their own); the rest of the
    chain runs ``samples`` times on stacked copies of their output, within the bound of
    :data:`regplug.uncertainty.DEFAULT_ROWS_PER_FORWARD`. The rest sees the same shapes and
    seed states as the whole model did, so it draws the same dropout masks as
    ``reuse_prefix=False``: the samples equal those of the whole-model path up to the float
    rounding of the prefix (bit for bit where the backend computes a row the same way in a
    smaller batch). Any other model runs whole for every sample; ``MCPrediction.reused``
    names the layers computed once, and the ``regplug`` logger says at DEBUG level what was
    split, or why nothing was.

    Seeding: every seed generator of the model starts from a state derived from ``seed``, so
    an integer seed gives the same samples on every call and touches no global random state
    (on the torch backend, unseeded dropout layers draw from torch's RNG, which is forked and
    seeded for the call). ``seed=None`` derives those states from Python's ``random`` module
    — which ``keras.utils.set_random_seed`` seeds — so results repeat after that call too.

    >>> import keras, numpy as np
    >>> from regplug.adapters.keras import mc_predict
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(32, activation="relu"),
    ...                           keras.layers.Dropout(0.2), keras.layers.Dense(1)])
    >>> p = mc_predict(model, np.linspace(-1, 1, 4)[:, None], samples=50, seed=0)
    >>> p
    MCPrediction(T=50, shape=(4, 1), level=0.95, interval='quantile')
    >>> bool((p.std > 0).all()), bool((p.lower <= p.mean).all())
    (True, True)
    """
    check_mc_arguments(_OWNER, samples=samples, level=level, interval=interval,
                       batch_size=batch_size, samples_per_batch=samples_per_batch, seed=seed,
                       keep_samples=keep_samples)
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"{_OWNER}: argument 'model' must be a Keras model or layer, got "
                        f"{type(model).__name__}")
    if is_dropout is not None and not callable(is_dropout):
        raise TypeError(f"{_OWNER}: argument 'is_dropout' must be a function of a layer, "
                        f"got {is_dropout!r}")
    check_bool(_OWNER, "compiled", compiled)
    check_bool(_OWNER, "reuse_prefix", reuse_prefix)
    select = is_dropout_layer if is_dropout is None else is_dropout
    leaves, rows = _input_leaves(x)
    if not model.built:
        model(keras.tree.pack_sequence_as(x, [leaf[:1] for leaf in leaves]), training=False)
    stochastic = [layer for layer in all_layers(model) if select(layer)]
    backend = keras.backend.backend()
    compiled = compiled and backend in ("tensorflow", "jax")
    base_seed = seed if seed is not None else random.randint(1, 2**31 - 1)
    chain = _split(model, select, x, leaves) if reuse_prefix else None

    parts, varies = [], False
    with _dropout_sampling(stochastic) as originals:
        key = tuple((id(layer), id(own), repr(getattr(layer, "rate", None)))
                    for layer, own in originals)
        # (prefix, rest) of a split chain, else nothing
        split: tuple[Callable[..., Any], ...] = () if chain is None else _compile(
            model, ("split", len(chain.prefix), *key), compiled,
            _stateless(model, chain.prefix, returns_state=False),
            _stateless(model, chain.suffix, returns_state=True))
        step = None  # the whole model's forward, traced when it is needed
        trainable = [v.value for v in model.trainable_variables]
        state = _seeded_state(model, base_seed)
        with _torch_rng(seed, backend, model):
            # Every forward pass gets the same shape: `block` rows (the last batch is padded
            # with copies of its last row) times `copies` (the smaller chunks of samples are
            # padded too); the padding is dropped from the outputs.
            block = rows if batch_size is None else min(batch_size, rows)
            chunks = sample_chunks(samples, block, samples_per_batch)
            copies = max(chunks)
            for start, stop in row_batches(rows, batch_size):
                n = stop - start
                padded = np.minimum(np.arange(start, start + block), stop - 1)
                acc = MCAccumulator(level=level, interval=interval, keep_samples=keep_samples,
                                    capacity=samples)
                h = None
                if chain is not None:
                    h = _rows_or_none(split[0](trainable, state, ops.take(leaves[0], padded,
                                                                          axis=0)), block)
                    if h is None:
                        _log.debug("%s: the prefix returned no tensor of %d rows: the whole "
                                   "model runs for every sample", _OWNER, block)
                        chain = None  # the same for every block
                if h is not None and chain is not None and not chain.suffix:  # none samples
                    y = _to_numpy(h, 1, block)[:, :n]
                    for k in chunks:
                        acc.add(np.broadcast_to(y, (k, *y.shape[1:])))
                elif h is not None:
                    # The copies of the prefix's output in the order the whole model's
                    # stacked input had: the rest draws the same masks as the whole did.
                    hs = ops.tile(h, [copies] + [1] * (len(h.shape) - 1))
                    for k in chunks:
                        y, state = split[1](trainable, state, hs)
                        acc.add(_to_numpy(y, copies, block)[:k, :n])
                else:
                    step = step or _forward(model, key, compiled)
                    index = np.tile(padded, copies)
                    xs = keras.tree.pack_sequence_as(
                        x, [ops.take(leaf, index, axis=0) for leaf in leaves])
                    for k in chunks:
                        y, state = step(trainable, state, xs)
                        acc.add(_to_numpy(y, copies, block)[:k, :n])
                varies = varies or acc.varies
                parts.append(acc.result())
    warn_if_constant(_OWNER, samples, varies, len(stochastic))
    result = MCPrediction.concatenate(parts)
    return result if chain is None else dataclasses.replace(result, reused=chain.reused)


def _input_leaves(x: Any) -> tuple[list[Any], int]:
    """The tensors of ``x`` (floating NumPy arrays cast to floatx) and their row count."""
    try:
        flat = keras.tree.flatten(x)
    except Exception:  # anything keras.tree cannot walk is reported below
        flat = []
    leaves = []
    for value in flat:
        if not ops.is_tensor(value):
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                raise TypeError(f"{_OWNER}: argument 'x' must hold arrays or tensors of "
                                f"numbers, got {type(value).__name__} of dtype {array.dtype}")
            if array.dtype.kind == "f":
                array = array.astype(keras.config.floatx())
            value = ops.convert_to_tensor(array)
        leaves.append(value)
    if not leaves or len(leaves) != len(flat) or any(len(v.shape) == 0 for v in leaves):
        raise TypeError(f"{_OWNER}: argument 'x' must be an array or tensor with a first "
                        f"(row) axis, or a list or dict of them; got {type(x).__name__}")
    lengths = [int(v.shape[0]) for v in leaves]
    if lengths[0] == 0 or any(n != lengths[0] for n in lengths):
        raise ValueError(f"{_OWNER}: the arrays of 'x' must share a first axis of at least "
                         f"one row, got lengths {lengths}")
    return leaves, lengths[0]


@contextlib.contextmanager
def _dropout_sampling(layers: list[Any]) -> Iterator[list[tuple[Any, Any]]]:
    """Make each layer's ``call`` pass ``training=True``; yield ``(layer, own call)`` pairs
    (``own call``: an instance-level ``call`` that was there before, else ``None``)."""
    originals = [(layer, layer.__dict__.get("call")) for layer in layers]
    try:
        for layer, _ in originals:
            inner = layer.call

            def call(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
                kwargs["training"] = True
                return _inner(*args, **kwargs)

            layer.call = call
        yield originals
    finally:
        for layer, own in originals:
            if own is not None:
                layer.call = own
            elif "call" in layer.__dict__:
                del layer.call


def _forward(model: Any, key: tuple[Any, ...], compiled: bool
             ) -> Callable[[list[Any], list[Any], Any], tuple[Any, list[Any]]]:
    """``(trainable values, non-trainable values, x) -> (y, new non-trainable values)``,
    traced and cached per model when ``compiled``."""
    model_ref = weakref.ref(model)

    def forward(trainable: list[Any], state: list[Any], x: Any) -> tuple[Any, list[Any]]:
        model = model_ref()
        assert model is not None  # called only while the model is being sampled
        result: tuple[Any, list[Any]] = model.stateless_call(trainable, state, x, training=False)
        return result

    (fn,) = _compile(model, ("whole", *key), compiled, forward)
    return fn


def _compile(model: Any, key: tuple[Any, ...], compiled: bool,
             *functions: Callable[..., Any]) -> tuple[Callable[..., Any], ...]:
    """``functions`` traced (``tf.function``/``jax.jit``), cached per model under ``key``.

    What tracing bakes in, and ``key`` must therefore name: which layers sample, their
    Python-side configuration, any instance-level call they had before (e.g. regplug's own,
    during fit), and where the model was split.
    """
    if not compiled:
        return functions
    cache = _COMPILED.setdefault(model, {})
    if key in cache:
        return cache[key]
    if keras.backend.backend() == "jax":
        import jax

        traced = tuple(jax.jit(fn) for fn in functions)
    else:
        import tensorflow as tf

        traced = tuple(tf.function(fn, reduce_retracing=True) for fn in functions)
    while len(cache) >= _CONFIGURATIONS:
        del cache[next(iter(cache))]  # the oldest
    cache[key] = traced
    return traced


# -- prefix reuse ---------------------------------------------------------------------------
# Built-in layers that run code Keras does not own (a Python function, a SavedModel, a torch
# module, a JAX/Flax function): never assumed deterministic.
_FOREIGN_CODE = tuple(t for t in (getattr(keras.layers, name, None) for name in (
    "Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer")) if isinstance(t, type))
# The layer classes Keras exports in keras.layers (aliases included), less those.
_BUILT_IN = frozenset(t for t in vars(keras.layers).values()
                      if isinstance(t, type) and issubclass(t, keras.layers.Layer)
                      and not issubclass(t, _FOREIGN_CODE))


@dataclasses.dataclass
class _Chain:
    """A chain of layers split into the prefix computed once and the rest sampled T times."""

    prefix: list[Any]
    suffix: list[Any]
    reused: tuple[str, ...]


def _deterministic(layer: Any, select: Callable[[Any], bool]) -> bool:
    """Whether ``layer`` computes the same output every time while sampling (inference mode):
    it and every layer inside it are built-in Keras layers that do not sample, own no seed
    generator, have no instance-level ``call`` and create no mask."""
    return all(type(inner) in _BUILT_IN and not select(inner)
               and not _compat.layer_seed_generators(inner) and "call" not in inner.__dict__
               and type(inner).compute_mask is keras.layers.Layer.compute_mask
               for inner in all_layers(layer))


def _chain_layers(model: Any) -> tuple[list[Any], str]:
    """The layers of ``model`` in call order when it is a chain, else ``[]`` and why not."""
    if type(model).call is not keras.Sequential.call and not _compat.runs_functional_graph(model):
        return [], f"{type(model).__name__} is not a Sequential or functional model"
    layers: list[Any] = []
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
        layers = [layer for layer in model.layers
                  if not isinstance(layer, keras.layers.InputLayer)]
        tensors = [inputs[0]] + [layer.output for layer in layers]
        linked = (len(inputs) == len(outputs) == 1 and bool(layers)
                  and all(layer.input is tensor for layer, tensor in zip(layers, tensors))
                  and tensors[-1] is outputs[0])
    except (AttributeError, ValueError, IndexError):  # no graph, or a layer called twice
        linked = False
    if not linked:
        return [], "its layers are not a chain (one input, one output, one after another)"
    return layers, ""


def _split(model: Any, select: Callable[[Any], bool], x: Any, leaves: list[Any]
           ) -> _Chain | None:
    """The split of ``model`` at its first layer that is not provably deterministic, or
    ``None`` (logged) when it has no deterministic prefix or is not a chain."""
    layers, why = _chain_layers(model)
    if not why and keras.tree.is_nested(x):
        why = "the input is not one tensor"
    if not why and keras.backend.standardize_dtype(leaves[0].dtype) != model.inputs[0].dtype:
        why = (f"the input's dtype {keras.backend.standardize_dtype(leaves[0].dtype)} is not "
               f"the model's {model.inputs[0].dtype}")
    if not why and any(type(layer).compute_mask is not keras.layers.Layer.compute_mask
                       for layer in layers):
        why = "a layer creates a mask"
    n = 0 if why else deterministic_prefix(layers, lambda layer: _deterministic(layer, select))
    if not why and n == 0:
        why = f"its first layer {layers[0].name!r} is not provably deterministic"
    if why:
        _log.debug("%s: the whole model runs for every sample: %s", _OWNER, why)
        return None
    _log.debug("%s: computed once per row block: %s; sampled: %s", _OWNER,
               ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in layers[:n]),
               ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in layers[n:])
               or "nothing")
    return _Chain(prefix=layers[:n], suffix=layers[n:],
                  reused=tuple(layer.name for layer in layers[:n]))


def _stateless(model: Any, layers: list[Any], *, returns_state: bool) -> Callable[..., Any]:
    """``(trainable values, non-trainable values, h)`` -> the chain ``layers`` applied to
    ``h`` in inference mode, with the new non-trainable values when ``returns_state``: what
    ``model.stateless_call`` does for the whole model (weak references only, so a cached
    function never keeps the model alive)."""
    model_ref = weakref.ref(model)
    layer_refs = [weakref.ref(layer) for layer in layers]

    def run(trainable: list[Any], state: list[Any], h: Any) -> Any:
        model = model_ref()
        assert model is not None  # called only while the model is being sampled
        mapping = [*zip(model.trainable_variables, trainable),
                   *zip(model.non_trainable_variables, state)]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            for ref in layer_refs:
                layer = ref()
                assert layer is not None  # the model holds its layers
                h = layer(h, training=False)
            if not returns_state:
                return h
            return h, [scope.get_current_value(v) for v in model.non_trainable_variables]

    return run


def _rows_or_none(h: Any, rows: int) -> Any:
    """``h`` when it is one tensor of ``rows`` rows (what may be stacked), else ``None``."""
    if keras.tree.is_nested(h) or len(h.shape) == 0 or h.shape[0] != rows:
        return None
    return h


def _seeded_state(model: Any, base_seed: int) -> list[Any]:
    """The model's non-trainable values, with every seed-generator state set from
    ``base_seed`` (one independent 31-bit seed per generator)."""
    seed_ids = {id(sg.state) for layer in all_layers(model)
                for sg in _compat.layer_seed_generators(layer)}
    variables = model.non_trainable_variables
    positions = [i for i, v in enumerate(variables) if id(v) in seed_ids]
    seeds = np.random.SeedSequence(base_seed).generate_state(max(len(positions), 1))
    values = [v.value for v in variables]
    for i, s in zip(positions, seeds):
        values[i] = ops.convert_to_tensor(np.array([int(s) & 0x7FFFFFFF, 0]),
                                          dtype=variables[i].dtype)
    return values


@contextlib.contextmanager
def _torch_rng(seed: int | None, backend: str, model: Any) -> Iterator[None]:
    """On the torch backend, unseeded dropout layers draw from torch's global RNG: fork and
    seed it for the call (that of the model's device too)."""
    if backend != "torch" or seed is None:
        yield
        return
    import torch

    from ..torch.uncertainty import seeded_torch_rng

    values = [v.value for v in model.variables[:1]]
    device = values[0].device if values else torch.device("cpu")
    with seeded_torch_rng(seed, device):
        yield


def _to_numpy(y: Any, copies: int, rows: int) -> np.ndarray:
    if keras.tree.is_nested(y):
        raise TypeError(f"{_OWNER}: the model must return one tensor, got "
                        f"{type(y).__name__}; wrap it in a model that returns the output to "
                        f"summarize")
    out = ops.convert_to_numpy(y)
    if out.ndim == 0 or out.shape[0] != copies * rows:
        raise ValueError(f"{_OWNER}: the model's output must have one row per input row: "
                         f"{copies * rows} rows in, output shape {out.shape}")
    if out.dtype.kind != "f" or out.dtype.itemsize < 2:
        out = out.astype(np.float32)
    samples: np.ndarray = out.reshape(copies, rows, *out.shape[1:])
    return samples
