"""Prefect flows: download, prepare, train and evaluate as retryable tasks.

The only package that imports prefect: pipeline.py (the flows), tasks.py, reporting.py (log
lines and progress sent to Prefect off training's path), local_api.py (Prefect's local API
server as a child of the command) and cli.py (Prefect started for a command line). The
commands that run the flows are gpucnn.cli's (``gpucnn train``, ``gpucnn evaluate --prefect``,
``gpucnn sweep``); they import Prefect only when a flow runs. ``python -m gpucnn.flows.train``,
``gpucnn.flows.evaluate`` and ``gpucnn.flows.sweep`` are those commands under module names.
"""
