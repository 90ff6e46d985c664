"""bertflow's plain library: every stage of the pipeline, with no Prefect and no MLflow.

Each stage lives in its own package (``ingest``, ``vocab``, ``mask``, ``pretrain``,
``finetune``, ``score``) with a typed ``config.py`` and a ``stage.py`` whose
``run(cfg, ...) -> StageResult`` the CLI, the Prefect tasks and the tests all call.
"""

from bertflow import __version__  # one version for the whole package

__all__ = ["__version__"]
