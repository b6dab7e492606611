"""Configuration of ``rmkit build-data`` (``kind: build-data`` recipes)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rmkit.config.validate import StrictModel


class SourceConfig(StrictModel):
    """One input source: a converter format applied to one or more inputs."""

    format: str = Field(description="converter name, e.g. hh-rlhf, ultrafeedback, pairs")
    inputs: list[str] = Field(
        min_length=1, description="files, folders or hub ids (owner/name[:config][@split])"
    )
    name: str | None = Field(None, description="source name in records (default: the format name)")
    split: str | None = Field(None, description="split to read from a DatasetDict / hub dataset")
    cap: int | None = Field(
        None, gt=0, description="keep at most this many records (a seeded uniform sample)"
    )
    weight: float = Field(
        1.0, gt=0, description="sampling weight: <1 keeps that fraction, >1 repeats records"
    )
    options: dict = Field(
        default_factory=dict, description="converter options (e.g. columns for 'pairs')"
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        from rmkit.data.sources import CONVERTERS

        if v not in CONVERTERS:
            import difflib

            close = difflib.get_close_matches(v, list(CONVERTERS), n=1)
            tip = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown format '{v}'{tip} (known: {', '.join(CONVERTERS)})")
        return v

    @model_validator(mode="after")
    def _known_options(self) -> SourceConfig:
        from rmkit.data.sources import CONVERTERS

        allowed = CONVERTERS[self.format].options
        unknown = [k for k in self.options if k not in allowed]
        if unknown:
            raise ValueError(
                f"format '{self.format}' has no option(s) {', '.join(unknown)}"
                + (f" (options: {', '.join(allowed)})" if allowed else " (it takes no options)")
            )
        check = CONVERTERS[self.format].check
        problem = check({**allowed, **self.options}) if check else None
        if problem:
            raise ValueError(f"format '{self.format}': {problem}")
        return self


class FilterConfig(StrictModel):
    empty_answer: Literal["drop", "error"] = Field(
        "drop",
        description="an empty (blank) candidate answer: drop the row, counted as 'empty_answer' "
        "(sources such as HH-RLHF contain them), or treat it as a bad row",
    )
    drop_identical: bool = True
    max_prompt_chars: int | None = Field(None, gt=0)
    max_candidate_chars: int | None = Field(None, gt=0)
    min_candidate_chars: int = Field(1, ge=1)
    dedup: bool = True


class SplitConfig(StrictModel):
    train: float = Field(0.9, ge=0)
    val: float = Field(0.05, ge=0)
    test: float = Field(0.05, ge=0)
    salt: str = Field(
        "rmkit", description="hash salt; the same prompt always lands in the same split for a salt"
    )

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1 (got {total:g})")
        return self


class ImageConfig(StrictModel):
    """Where image files may come from and what an acceptable image is."""

    roots: list[str] = Field(
        default_factory=list,
        description="folders image paths may point into (default: each input's own folder)",
    )
    max_file_bytes: int = Field(50_000_000, gt=0, description="largest image file (bytes)")
    max_side: int = Field(16_384, gt=0, description="largest width or height (pixels)")
    max_pixels: int = Field(80_000_000, gt=0, description="largest width x height")
    min_side: int = Field(1, gt=0, description="smallest width or height (pixels)")
    formats: list[Literal["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]] = Field(
        default_factory=lambda: ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"],
        min_length=1,
        description="accepted image formats",
    )


class BuildDataConfig(StrictModel):
    kind: Literal["build-data"] = "build-data"
    sources: list[SourceConfig] = Field(min_length=1)
    output: str | None = None
    seed: int = 0
    on_error: Literal["fail", "skip"] = "fail"
    balance_positions: bool = True
    filters: FilterConfig = Field(default_factory=FilterConfig)
    splits: SplitConfig = Field(default_factory=SplitConfig)
    images: ImageConfig = Field(default_factory=ImageConfig)

    @classmethod
    def resolve_paths(cls, data: dict, base) -> dict:
        """Make relative input paths in a recipe relative to the recipe's folder (hub ids kept)."""
        from rmkit.config.paths import resolve_input

        for src in data.get("sources") or []:
            if isinstance(src, dict) and isinstance(src.get("inputs"), list):
                src["inputs"] = [
                    resolve_input(x, base) if isinstance(x, str) else x for x in src["inputs"]
                ]
        images = data.get("images")
        if isinstance(images, dict) and isinstance(images.get("roots"), list):
            images["roots"] = [
                str((base / x).resolve()) if isinstance(x, str) else x for x in images["roots"]
            ]
        return data
