"""mlruntime: the PyTorch programs that run inside the platform's pods.

Installed in the runtime image as the top-level package ``mlruntime``
(``python -m mlruntime.train|serve|batch|fetch``); inside this repository the
same code is importable as ``workloads.runtime``. Modules import each other
relatively for that reason, and this file imports nothing: the Pulumi program
imports ``workloads.runtime.contract`` without torch installed.
"""
