"""The built-in plugins, by the names configs and the CLI use.

``pyproject.toml`` declares the same table as entry points of group ``regplug``; this copy
lets a source checkout and a frozen application find them without package metadata.

Docs: docs/plugins/index.md
"""

BUILTIN_PLUGINS: dict[str, str] = {
    "l1": "regplug.plugins.penalties:L1",
    "l2": "regplug.plugins.penalties:L2",
    "elastic_net": "regplug.plugins.penalties:ElasticNet",
    "decoupled_weight_decay": "regplug.plugins.decay:DecoupledWeightDecay",
    "proximal_l1": "regplug.plugins.proximal:ProximalL1",
    "max_norm": "regplug.plugins.constraints:MaxNorm",
    "dropout_schedule": "regplug.plugins.dropout:DropoutSchedule",
    "early_stopping": "regplug.plugins.early_stopping:EarlyStopping",
    "generalization_gap": "regplug.plugins.monitors:GeneralizationGap",
    "non_finite_guard": "regplug.plugins.monitors:NonFiniteGuard",
    "overfit_batch": "regplug.plugins.sanity:OverfitBatch",
    "layer_monitor": "regplug.plugins.layer_monitor:LayerMonitor",
    "freeze": "regplug.plugins.freeze:Freeze",
    "layerwise_lr": "regplug.plugins.layerwise:LayerwiseLR",
    "ema": "regplug.plugins.averaging:EMA",
    "swa": "regplug.plugins.averaging:SWA",
    "l2sp": "regplug.plugins.l2sp:L2SP",
}
