"""Typed configuration of distillation: which teacher, which student, which loss, how long."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from bertflow.bert_core.configtools import Config, Paths, PathStr


class StudentShape(Config):
    """A student's shape for ``student_init: config``; every unset key keeps the teacher's value."""

    section = "distill.student_config"

    num_hidden_layers: int | None = Field(None, ge=1, description="Transformer layers")
    hidden_size: int | None = Field(None, ge=8, description="Width of the hidden states")
    num_attention_heads: int | None = Field(None, ge=1, description="Attention heads (must divide hidden_size)")
    intermediate_size: int | None = Field(None, ge=8, description="Width of the feed-forward layers")

    def overrides(self) -> dict[str, int]:
        return {k: v for k, v in dict(self).items() if v is not None}


class DistillConfig(Config):
    section = "distill"

    teacher: str | None = Field(
        None, description="The fine-tuned sequence or token classifier to distill: models:/name@alias, runs:/..., "
                          "or a local HF directory; null: the workspace's fine-tuned model")
    student_init: Literal["teacher", "checkpoint", "config"] = Field(
        "teacher", description="teacher: every k-th teacher layer (DistilBERT/TinyBERT style); checkpoint: "
                               "student_model (e.g. our pretrained export) with a fresh head; config: random "
                               "weights shaped by student_config")
    student_layers: int = Field(
        3, ge=1, description="student_init teacher: layers kept (k = teacher layers // this; layers k, 2k, ..., "
                             "counted from 1, so the top layer is always kept)")
    teacher_layers: tuple[int, ...] | None = Field(
        None, description="student_init teacher: the teacher layers to keep, 0-based (overrides the every-k-th rule)")
    student_model: PathStr | None = Field(
        None, description="student_init checkpoint: a local HF BERT directory with the teacher's vocabulary")
    student_config: StudentShape = Field(
        StudentShape(), description="student_init config: the student's shape (unset keys: the teacher's)")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the soft labels (Hinton et al.)")
    alpha: float = Field(
        0.5, ge=0, le=1,
        description="Weight of the soft-label KL loss; 1 - alpha weighs cross-entropy on gold labels (where they exist)")
    hidden_weight: float = Field(
        0.0, ge=0, description="Weight of matching hidden states (MSE, student layer m to teacher layer m*k); "
                               "0: off; needs equal hidden sizes")
    unlabeled: Paths = Field(
        (), description="Extra training text the teacher labels: Parquet/CSV/JSONL/text files or globs "
                        "(e.g. the ingested corpus or a lake sample)")
    unlabeled_column: str = Field("text", min_length=1, description="Column of the unlabeled files holding the text")
    unlabeled_limit: int | None = Field(
        None, ge=1, description="Use at most this many unlabeled texts (a seeded sample); null: all")
    epochs: int = Field(3, ge=1, description="Passes over the training text")
    batch_size: int = Field(32, ge=1, description="Training examples per optimizer step")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate of the student (warmup, then linear decay)")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of the training steps spent warming up")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    early_stopping_patience: int = Field(
        2, ge=0, description="Epochs without improvement of the validation metric before stopping (0: never)")
    max_steps: int | None = Field(None, ge=1, description="Cap on optimizer steps (smoke runs)")
    budget_minutes: float | None = Field(None, gt=0, description="Wall-clock cap on training; the best epoch is kept")
    speed_rows: int = Field(
        512, ge=0, description="Validation rows the teacher and the student are timed on (rows/s in MLflow); 0: skip")
    seed: int = Field(42, description="Seed of data order, dropout, sampling and a fresh head")
    registered_model_name: str | None = Field(
        None, description="Register the student under this name; null: the teacher's registered model "
                          "(finetune.registered_model_name for a directory)")

    @model_validator(mode="after")
    def _student_source(self) -> "DistillConfig":
        if self.student_init == "checkpoint" and not self.student_model:
            raise ValueError("distill.student_init is checkpoint but distill.student_model is not set")
        if self.teacher_layers is not None and (not self.teacher_layers or min(self.teacher_layers) < 0):
            raise ValueError("distill.teacher_layers must list layer numbers from 0")
        unused = [key for key, used_by, is_set in (
            ("teacher_layers", "teacher", self.teacher_layers is not None),
            ("student_model", "checkpoint", bool(self.student_model)),
            ("student_config", "config", bool(self.student_config.overrides()))) if is_set and used_by != self.student_init]
        if unused:
            raise ValueError(f"distill.{unused[0]} is set but distill.student_init is {self.student_init!r}, which "
                             "does not use it")
        return self
