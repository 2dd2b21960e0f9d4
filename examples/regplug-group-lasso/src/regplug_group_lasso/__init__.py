"""regplug-group-lasso: group lasso over whole parameter tensors, as a regplug plugin.

Installed, the plugin is available by name (``group_lasso``) in regplug configs and in
``regplug plugins``; it runs only where a config or code names it::

    import regplug
    plugins = regplug.build_plugins([{"name": "group_lasso", "strength": 1e-3}])
"""

from .plugin import EPS, GroupLasso, add_group_lasso_grad, group_lasso_value

__all__ = ["GroupLasso", "group_lasso_value", "add_group_lasso_grad", "EPS"]
__version__ = "0.1.0"
