"""The search space of a sweep (``bertflow sweep --space SPACE.yaml``), typed and checked before any trial runs.

A space file names ``finetune.*`` config keys and how to draw each, the sampler's seed and
the pruner that stops poor trials after an epoch::

    params:
      finetune.lr: {type: float, low: 1.0e-5, high: 3.0e-4, log: true}
      finetune.batch_size: {type: categorical, choices: [16, 32, 64]}
      finetune.epochs: {type: int, low: 2, high: 6}
    sampler: {seed: 0, startup_trials: 4}
    pruner: {kind: median, min_epochs: 1}

Every bound and choice must be a valid value of its key (``finetune.warmup_ratio`` < 1, ...),
so a typo fails here in milliseconds, with the key named, not hours later in a trial.
Values that only fail with the data (a column that is not there) fail their trial, not the sweep.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bertflow.bert_core.config import presets_dir
from bertflow.bert_core.configtools import Config, evolve, from_dict, load_yaml
from bertflow.bert_core.errors import ConfigError
from bertflow.bert_core.finetune.config import FinetuneConfig

SECTION = "finetune"  # the config section a space may sweep
Scalar = bool | int | float | str | None


class ParamSpec(Config):
    """How one key is drawn: a float or int range (optionally log-scaled or stepped), or a list of choices."""

    type: Literal["float", "int", "categorical"] = Field(
        description="float: a real in [low, high]; int: a whole number in [low, high]; categorical: one of choices")
    low: float | None = Field(None, description="float/int: the smallest value")
    high: float | None = Field(None, description="float/int: the largest value")
    log: bool = Field(False, description="float/int: draw on a log scale (learning rates); needs low > 0")
    step: float | None = Field(None, gt=0, description="float/int: only low, low + step, ... (not with log)")
    choices: tuple[Scalar, ...] | None = Field(None, description="categorical: the values to choose from")

    @model_validator(mode="after")
    def _consistent(self) -> "ParamSpec":
        if self.type == "categorical":
            extra = [k for k in ("low", "high", "step") if getattr(self, k) is not None] + (["log"] if self.log else [])
            if extra:
                raise ValueError(f"a categorical parameter takes only choices (drop {', '.join(extra)})")
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty list of choices")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise ValueError(f"choices repeat a value: {list(self.choices)}")
            return self
        if self.choices is not None:
            raise ValueError(f"choices belong to type categorical, not {self.type} (use low and high)")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs low and high")
        if self.type == "int" and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            raise ValueError(f"an int parameter needs whole numbers (low {self.low}, high {self.high}, step {self.step})")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled parameter needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self

    def values_to_check(self) -> list[Any]:
        """The values that must be valid for the key: the bounds (the range between follows) or every choice."""
        if self.type == "categorical":
            return list(self.choices or ())
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class SamplerSpec(Config):
    """Optuna's TPE sampler: seeded, so a sweep proposes the same trials when rerun from scratch."""

    seed: int = Field(0, description="Seed of the sampler (trial proposals are reproducible)")
    startup_trials: int = Field(
        10, ge=0, description="Random trials before TPE starts modelling the space (Optuna's n_startup_trials)")


class PrunerSpec(Config):
    """Which trials stop early, judged on the validation metric after each epoch."""

    kind: Literal["median", "hyperband", "threshold", "none"] = Field(
        "median", description="median: below the median of earlier trials at the same epoch; hyperband: "
        "successive halving over epochs; threshold: below `lower`; none: never prune")
    startup_trials: int = Field(2, ge=0, description="median: trials that finish before any trial is pruned")
    min_epochs: int = Field(
        1, ge=1, description="The first epoch after which a trial may be pruned (hyperband: its min_resource)")
    reduction_factor: int = Field(3, ge=2, description="hyperband: keep 1 in this many trials at each rung")
    lower: float | None = Field(None, description="threshold: prune a trial whose validation metric is below this")

    @model_validator(mode="after")
    def _threshold_has_lower(self) -> "PrunerSpec":
        if self.kind == "threshold" and self.lower is None:
            raise ValueError("kind threshold needs lower (the validation metric a trial must reach)")
        return self


class SweepSpace(Config):
    """A sweep's search space over ``finetune.*`` keys, its sampler and its pruner."""

    params: dict[str, ParamSpec] = Field(
        min_length=1, description="finetune.<key>: how to draw it (type float/int/categorical)")
    sampler: SamplerSpec = Field(SamplerSpec(), description="The TPE sampler's seed and start-up trials")
    pruner: PrunerSpec = Field(PrunerSpec(), description="Which trials stop early (per-epoch validation metric)")

    @field_validator("params")
    @classmethod
    def _known_keys_and_values(cls, params: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        for key, spec in params.items():
            name = _finetune_key(key)
            allowed = _kinds(FinetuneConfig.model_fields[name].annotation)
            if spec.type not in allowed:
                raise ValueError(f"{key}: type {spec.type} does not fit this key (use {' or '.join(allowed)})")
            for value in spec.values_to_check():
                try:
                    FinetuneConfig(**{name: value})
                except ConfigError as exc:
                    raise ValueError(f"{key}: {value!r} is not a valid value ({exc})") from None
        return params

    def apply(self, cfg: FinetuneConfig, values: dict[str, Any]) -> FinetuneConfig:
        """``cfg`` with one trial's drawn ``values`` (keyed ``finetune.<key>``), validated."""
        return evolve(cfg, **{_finetune_key(k): v for k, v in values.items()})


def _finetune_key(key: str) -> str:
    section, _, name = key.partition(".")
    if section != SECTION or name not in FinetuneConfig.model_fields:
        known = ", ".join(sorted(FinetuneConfig.model_fields))
        raise ValueError(f"unknown key {key!r}: a space sweeps finetune.<key> config keys ({known})")
    return name


def _kinds(annotation: Any) -> tuple[str, ...]:
    """The distribution types that fit a config field: numbers take ranges, everything takes choices."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] \
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union else [annotation]
    if args == [int]:
        return ("int", "categorical")
    if args == [float]:
        return ("float", "int", "categorical")
    return ("categorical",)


def spaces_dir() -> Path:
    """The packaged spaces (``configs/spaces/``), beside the presets."""
    return presets_dir() / "spaces"


def load_space(name_or_path: str | Path) -> SweepSpace:
    """A space from a YAML file, or a packaged space by name (``tiny`` -> ``configs/spaces/tiny.yaml``)."""
    path = Path(name_or_path)
    if not path.is_file() and "/" not in str(name_or_path) and (spaces_dir() / f"{path.stem}.yaml").is_file():
        path = spaces_dir() / f"{path.stem}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in spaces_dir().glob("*.yaml")))
        raise ConfigError(f"space file not found: {path} (packaged spaces: {names})")
    try:
        return from_dict(SweepSpace, load_yaml(path))
    except ConfigError as exc:
        raise ConfigError(f"space file {path}: {exc}") from None
