"""Configuration of ``rmkit eval`` (``kind: eval`` recipes).

Benchmark-dependent defaults (split, sampling temperature/top-p, number of votes) are filled in
before validation from :data:`rmkit.eval.benchmarks.BENCHMARKS`, so the resolved config that is
printed by ``--dry-run`` and saved in the output folder always holds concrete values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rmkit.config.validate import StrictModel
from rmkit.generation.config import BackendConfig

BENCHMARK_NAMES = (
    "vl-rewardbench",
    "multimodal-rewardbench",
    "genai-bench",
    "rewardbench",
    "rewardbench2",
    "mm-rlhf",
    "imagereward",
    "records",
)
ORDER_MODES = ("random", "both", "native")


class JudgeConfig(BackendConfig):
    """The judge: a local model (``model``) or an OpenAI-compatible endpoint (``base_url``); the
    keys are :class:`~rmkit.generation.config.BackendConfig`'s, with a smaller local batch."""

    batch_size: int = Field(8, ge=1, description="local: conversations per generate call")


class SamplingConfig(StrictModel):
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = off")
    repetition_penalty: float = Field(
        1.0, gt=0, description="1.0 = off (never the checkpoint's generation_config value)"
    )
    max_new_tokens: int = Field(1024, ge=1)


class EvalConfig(StrictModel):
    """Everything one ``rmkit eval`` run needs; unknown keys are rejected."""

    kind: Literal["eval"] = "eval"
    benchmark: Literal[BENCHMARK_NAMES]  # type: ignore[valid-type]
    data: str = Field(description="the benchmark's local folder or file")
    output: str = Field(description="output folder (predictions, metrics, report)")
    split: str | None = Field(None, description="split to read (benchmark default when omitted)")
    subset: str | None = Field(
        None, description="config/subset, e.g. image_generation for genai-bench"
    )
    image_root: str | None = Field(None, description="folder that relative image paths start from")
    limit: int | None = Field(None, ge=1, description="judge only the first N items")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    template: str = Field("default", description="judge template name or path")
    method: Literal["generate", "likelihood"] = Field(
        "generate",
        description="generate: parse a sampled verdict; likelihood: the answer with the highest "
        "probability after a forced answer tag (local judges only)",
    )
    reasoning: Literal["empty", "greedy"] = Field(
        "empty",
        description="method likelihood only. empty: force an empty think block; greedy: the "
        "judge writes its think block greedily (sampling.max_new_tokens), then the answers are "
        "scored after it",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    votes: int = Field(1, ge=1, description="verdicts sampled per item and order (voting@k)")
    orders: Literal[ORDER_MODES] = "random"  # type: ignore[valid-type]
    seed: int = Field(0, description="seed of the per-item order and of vote tie-breaking")

    @model_validator(mode="before")
    @classmethod
    def _benchmark_defaults(cls, data: Any) -> Any:
        """Fill split, votes and sampling from the benchmark's protocol where not given."""
        if not isinstance(data, dict) or data.get("benchmark") not in BENCHMARK_NAMES:
            return data
        from rmkit.eval.benchmarks import BENCHMARKS

        spec = BENCHMARKS[data["benchmark"]]
        out = dict(data)
        if out.get("split") is None and spec.default_split is not None:
            out["split"] = spec.default_split
        if out.get("votes") is None:
            out["votes"] = spec.default_votes
        sampling = out.get("sampling")
        sampling = (
            dict(sampling) if isinstance(sampling, dict) else ({} if sampling is None else sampling)
        )
        if isinstance(sampling, dict):
            for key, value in spec.default_sampling.items():
                if sampling.get(key) is None:
                    sampling[key] = value
            out["sampling"] = sampling
        return out

    @field_validator("template")
    @classmethod
    def _nonempty_template(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("template must be a template name or a file path")
        return v

    @model_validator(mode="after")
    def _needs_judge(self) -> EvalConfig:
        if not self.judge.configured:
            raise ValueError(
                "no judge: set judge.model (a local model) or judge.base_url + judge.api_model (an API)"
            )
        if self.method == "likelihood":
            if self.judge.is_api:
                raise ValueError(
                    "method 'likelihood' reads answer probabilities from a local judge.model; "
                    "an API judge needs method: generate"
                )
            if self.votes != 1:
                raise ValueError(
                    f"method 'likelihood' is deterministic: votes must be 1, got {self.votes}"
                )
        elif self.reasoning != "empty":
            raise ValueError(
                f"reasoning: {self.reasoning} applies to method 'likelihood' only; method "
                f"'{self.method}' samples the whole judgement"
            )
        return self

    @classmethod
    def resolve_paths(cls, data: dict[str, Any], base: Path) -> dict[str, Any]:
        """Make a recipe's relative paths relative to the recipe's folder ``base``."""
        out = dict(data)
        for key in ("data", "output", "image_root"):
            if isinstance(out.get(key), str) and not Path(out[key]).expanduser().is_absolute():
                out[key] = str(base / out[key])
        if isinstance(out.get("template"), str) and (base / out["template"]).is_file():
            out["template"] = str(base / out["template"])
        judge = out.get("judge")
        # Not BackendConfig.resolve_paths: eval keeps its paths unresolved (base / path), and a
        # resumed run compares judge.model / judge.adapter with the saved config.
        if isinstance(judge, dict):
            judge = dict(judge)
            if isinstance(judge.get("adapter"), str) and not Path(judge["adapter"]).is_absolute():
                judge["adapter"] = str(base / judge["adapter"])
            if isinstance(judge.get("model"), str) and (base / judge["model"]).is_dir():
                judge["model"] = str(base / judge["model"])
            out["judge"] = judge
        return out

    @property
    def n_slots(self) -> int:
        """Orders judged per vote: 2 in both-orders mode, else 1."""
        return 2 if self.orders == "both" else 1

    @property
    def samples_per_item(self) -> int:
        return self.votes * self.n_slots
