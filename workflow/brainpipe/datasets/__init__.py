"""Dataset registry modules: one module per dataset (``synthetic``, ``nsd``, ...).

Submodules are imported explicitly, e.g. ``from brainpipe.datasets import synthetic``.
"""
