"""Prefect flows: download, prepare, train and evaluate as retryable tasks.

The only package that imports prefect. Its modules import it on use, so that
``python -m gpucnn.flows.train --help`` answers at once, without Prefect or a GPU.

    python -m gpucnn.flows.train             # the whole pipeline on the defaults
    python -m gpucnn.flows.evaluate CHECKPOINT
    python -m gpucnn.flows.sweep --grid lr=1e-3,3e-4
"""
