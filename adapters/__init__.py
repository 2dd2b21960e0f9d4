"""Adapters: the only part of regplug that knows a framework.

``regplug.adapters.torch`` wires plugins into a PyTorch loop. Import the adapter you need;
importing this package imports no framework.
"""
