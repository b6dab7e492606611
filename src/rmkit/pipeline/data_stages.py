"""Config models of the two data stages that have no recipe kind of their own: ``caption`` and
``mix`` (they wrap :func:`rmkit.data.caption.caption_dataset` and
:func:`rmkit.data.mix.mix_datasets`, the functions behind ``rmkit build-data caption`` / ``mix``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from rmkit.config.validate import StrictModel
from rmkit.generation.config import BackendConfig

SPLITS = ("train", "val", "test")


class CaptionStageConfig(BackendConfig):
    """Caption every image of a built dataset; write caption-substituted copies of its records.

    The captioner's keys are :class:`~rmkit.generation.config.BackendConfig`'s, flat in the
    stage (``model`` for a local vision-language model, or ``base_url`` + ``api_model``), one of
    them required; locally ``batch_size`` images per generate call, over an API ``concurrency``
    requests in flight and images per chunk.
    """

    backend_required: ClassVar[bool] = True

    kind: Literal["caption"] = "caption"
    dataset: str = Field(description="a built dataset folder (a build-data or mix output)")
    output: str = Field(description="set by the pipeline: the stage folder")
    batch_size: int = Field(8, ge=1, description="local: images per generate call")
    prompt: str | None = Field(None, description="captioning instruction (default: detailed)")
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_k: int = Field(0, ge=0, description="0 = off")
    repetition_penalty: float = Field(
        1.0, gt=0, description="1.0 = off (never the checkpoint's generation_config value)"
    )
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: list(SPLITS))
    keep_text: bool = Field(False, description="also copy records without images")

    @property
    def model_id(self) -> str:
        """The captioner's id in the caption cache key (as ``rmkit build-data caption`` names it)."""
        return ("api:" if self.is_api else "local:") + self.name

    @classmethod
    def resolve_paths(cls, data: dict[str, Any], base: Path) -> dict[str, Any]:
        out = super().resolve_paths(data, base)
        dataset = out.get("dataset")
        if isinstance(dataset, str) and not Path(dataset).expanduser().is_absolute():
            out["dataset"] = str((base / dataset).resolve())
        return out


class MixPart(StrictModel):
    path: str = Field(description="a dataset folder or a records .jsonl file")
    weight: float = Field(gt=0, description="ratio weight (by: ratio) or record count (by: count)")


class MixStageConfig(StrictModel):
    """Mix record sets with given ratios or counts (e.g. MSRL stage 2: 4 caption : 1 text)."""

    kind: Literal["mix"] = "mix"
    parts: list[MixPart] = Field(min_length=2)
    output: str = Field(description="set by the pipeline: the stage folder")
    seed: int = 0
    by: Literal["ratio", "count"] = "ratio"
    total: int | None = Field(None, ge=1, description="by ratio: records per split")
    splits: list[Literal["train", "val", "test"]] | None = None
    repeat: bool = Field(False, description="reuse records of a part that has too few")

    @classmethod
    def resolve_paths(cls, data: dict[str, Any], base: Path) -> dict[str, Any]:
        out = dict(data)
        if isinstance(out.get("parts"), list):
            out["parts"] = [
                {**p, "path": str((base / p["path"]).resolve())}
                if isinstance(p, dict) and isinstance(p.get("path"), str)
                else p
                for p in out["parts"]
            ]
        return out
