"""Configuration of ``rmkit distill`` (``kind: distill`` recipes).

One command, three modes that share the sampling, filtering and resumable-output machinery:

- ``teacher``: a teacher (an OpenAI-compatible API or a local model) writes ``n`` chain-of-thought
  judgements per record; traces whose verdict matches the label and that pass the format check
  (and optionally the consistency check) become SFT trace records (UnifiedReward-Think's cold
  start).
- ``rejection-sampling``: the same with the model being trained as the sampler; every record
  lands in at most one of two sets: its kept traces (SFT) or, when no trace was kept, the RL set
  ``rl.jsonl`` (UnifiedReward-Think's split; ``rejection.rl: wrong`` sends only records with no
  correct sample there).
- ``cmkd``: a caption-conditioned model samples ``n`` per caption-substituted record; the best
  sample (correct, then well formatted, then most confident) becomes the SFT target of the
  matching image record: its caption block followed by the trace (MSRL's cross-modal
  distillation).

``sampling.attempts`` asks again for a record with no kept trace, up to that many times, and
labels each record with the attempts it needed (R1-Reward's difficulty label; ``hard`` writes
the hard subset to ``hard.jsonl``). ``sample`` draws a seeded random subset of the input instead
of ``limit``'s first records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from rmkit.config.validate import StrictModel, field_rule
from rmkit.generation.config import BackendConfig

MODES = ("teacher", "rejection-sampling", "cmkd")


class SamplingConfig(StrictModel):
    samples: int = Field(4, ge=1, description="completions per record (n)")
    attempts: int = Field(
        1,
        ge=1,
        le=100,
        description="ask again, up to this many times in all, for a record whose completions "
        "gave no kept trace; each attempt draws `samples` completions with seeds of its own "
        "(R1-Reward: 3 attempts of 1 sample at temperature 0)",
    )
    temperature: float = Field(1.0, ge=0, description="0 = greedy (then samples must be 1)")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = off")
    repetition_penalty: float = Field(
        1.0, gt=0, description="1.0 = off (never the checkpoint's generation_config value)"
    )
    max_new_tokens: int = Field(1024, ge=1)
    logprobs: bool = Field(
        True,
        description="ask for token log-probabilities where samples are ranked (cmkd, keep: one); "
        "turn off for an API that refuses them",
    )

    @model_validator(mode="after")
    def _greedy_single(self) -> SamplingConfig:
        if self.temperature == 0 and self.samples > 1:
            raise ValueError(
                "greedy decoding (temperature 0) gives the same trace every time: set samples to "
                "1 or a temperature above 0"
            )
        return self


class ConsistencyConfig(StrictModel):
    """Optional filter: a judge checks that the answer agrees with the end of the reasoning."""

    judge: BackendConfig = Field(description="a local model or an API (generation backend keys)")
    last_lines: int = Field(3, ge=1, description="reasoning lines the judge reads")
    max_chars: int = Field(1500, ge=100)

    @model_validator(mode="after")
    def _has_judge(self) -> ConsistencyConfig:
        if not self.judge.configured:
            raise field_rule(
                "{judge} needs model (a local model) or base_url + api_model (an API)", "judge"
            )
        return self


class FilterConfig(StrictModel):
    correct: bool = Field(True, description="keep only traces whose verdict matches the label")
    format: Literal["strict", "lenient", "off"] = Field(
        "strict", description="format check (and verdict parsing mode); off = no format check"
    )
    dedupe: bool = Field(True, description="drop a trace identical to one already kept")
    consistency: ConsistencyConfig | None = None


class PricingConfig(StrictModel):
    """Prices for the cost estimate (per million tokens); unset = no estimate."""

    input_per_1m: float | None = Field(None, ge=0)
    output_per_1m: float | None = Field(None, ge=0)
    currency: str = "USD"

    @property
    def known(self) -> bool:
        return self.input_per_1m is not None or self.output_per_1m is not None


class RejectionConfig(StrictModel):
    keep: Literal["all", "one"] = Field(
        "all", description="all correct traces of a record, or only the best one"
    )
    rl: Literal["not_kept", "wrong"] = Field(
        "not_kept",
        description="which records without a kept trace go to rl.jsonl: all of them "
        "(not_kept), or only those none of whose samples had the right verdict (wrong: a "
        "record with a correct but filtered sample, e.g. badly formatted, goes to neither set "
        "and is counted as dropped_records)",
    )


class HardConfig(StrictModel):
    """The hard subset (``hard.jsonl``): records that needed several attempts or none solved."""

    min_difficulty: int = Field(
        2,
        ge=2,
        description="records whose difficulty (the attempt that first gave a kept trace; "
        "attempts + 1 when none did) is at least this go to hard.jsonl",
    )


class CmkdConfig(StrictModel):
    image_records: str | None = Field(
        None, description="records with real images that the caption records map back to"
    )
    image_root: str | None = Field(None, description="default: the image records file's folder")
    image_template: str = Field(
        "msrl-caption", description="judge template of the image prompt (needs a <caption> block)"
    )


class DistillConfig(StrictModel):
    """Everything one ``rmkit distill`` run needs; unknown keys are rejected."""

    kind: Literal["distill"] = "distill"
    mode: Literal["teacher", "rejection-sampling", "cmkd"] = "teacher"
    input: str = Field(description="records JSONL (or a build-data folder, see split)")
    split: str = Field("train", description="split file read when input is a folder")
    output: str = Field(description="output folder (traces, rejects, summary, state, cache)")
    image_root: str | None = Field(None, description="default: the input file's folder")
    template: str = Field("default", description="judge template name or file")
    teacher: BackendConfig = Field(
        default_factory=BackendConfig,
        description="who writes the traces: a local model or an API (generation backend keys)",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    rejection: RejectionConfig = Field(default_factory=RejectionConfig)
    hard: HardConfig | None = Field(
        None, description="write the hard subset to hard.jsonl (needs sampling.attempts > 1)"
    )
    cmkd: CmkdConfig = Field(default_factory=CmkdConfig)
    seed: int = Field(0, description="seeds candidate orders and sampling")
    limit: int | None = Field(None, ge=1, description="process only the first N records")
    sample: int | None = Field(
        None,
        ge=1,
        description="process N records drawn uniformly at random from the whole input "
        "(seeded by seed; kept in input order)",
    )
    chunk_records: int | None = Field(
        None,
        ge=1,
        description="local model: records per generate call; API: records per consistency-judge "
        "batch and between fsyncs (records stream; default from concurrency/batch)",
    )

    @model_validator(mode="before")
    @classmethod
    def _mode_defaults(cls, data: Any) -> Any:
        """CMKD's caption model writes MSRL-style outputs unless a template is given."""
        if isinstance(data, dict) and data.get("mode") == "cmkd" and not data.get("template"):
            return {**data, "template": "msrl"}
        return data

    @model_validator(mode="after")
    def _complete(self) -> DistillConfig:
        if not self.teacher.configured:
            raise ValueError(
                "no teacher: set teacher.base_url + teacher.api_model (an API) or teacher.model "
                "(a local model)"
            )
        if self.mode == "cmkd" and not self.cmkd.image_records:
            raise ValueError("mode cmkd needs cmkd.image_records (the records with real images)")
        if self.mode == "cmkd" and not self.filters.correct:
            raise ValueError("mode cmkd always selects by correctness: leave filters.correct true")
        if self.limit is not None and self.sample is not None:
            raise ValueError(
                "set limit (the first N records) or sample (N records drawn at random), not both"
            )
        attempts = self.sampling.attempts
        if self.mode == "cmkd" and attempts > 1:
            raise ValueError(
                "sampling.attempts works in modes teacher and rejection-sampling; cmkd selects "
                "among the samples of one draw: raise sampling.samples instead"
            )
        if self.hard is not None and attempts == 1:
            raise ValueError(
                "hard needs sampling.attempts > 1 (the difficulty label is the number of "
                "attempts a record needed)"
            )
        if self.hard is not None and self.hard.min_difficulty > attempts + 1:
            raise ValueError(
                f"hard.min_difficulty is at most sampling.attempts + 1 = {attempts + 1} (the "
                f"difficulty of a record no attempt solved); got {self.hard.min_difficulty}"
            )
        if self.mode != "rejection-sampling" and self.rejection.rl != "not_kept":
            raise ValueError(
                "rejection.rl decides which records go to rl.jsonl, which only mode "
                "rejection-sampling writes"
            )
        return self

    @classmethod
    def resolve_paths(cls, data: dict[str, Any], base: Path) -> dict[str, Any]:
        """Make a recipe's relative paths relative to the recipe's folder ``base``."""
        out = dict(data)
        for key in ("input", "output", "image_root"):
            if isinstance(out.get(key), str) and not Path(out[key]).expanduser().is_absolute():
                out[key] = str((base / out[key]).resolve())
        if isinstance(out.get("template"), str) and (base / out["template"]).is_file():
            out["template"] = str((base / out["template"]).resolve())
        if isinstance(out.get("teacher"), dict):
            out["teacher"] = BackendConfig.resolve_paths(out["teacher"], base)
        filters = out.get("filters")
        if isinstance(filters, dict) and isinstance(filters.get("consistency"), dict):
            cons = dict(filters["consistency"])
            if isinstance(cons.get("judge"), dict):
                cons["judge"] = BackendConfig.resolve_paths(cons["judge"], base)
            out["filters"] = {**filters, "consistency": cons}
        cmkd = out.get("cmkd")
        if isinstance(cmkd, dict):
            cmkd = dict(cmkd)
            for key in ("image_records", "image_root"):
                if isinstance(cmkd.get(key), str) and not Path(cmkd[key]).is_absolute():
                    cmkd[key] = str((base / cmkd[key]).resolve())
            tpl = cmkd.get("image_template")
            if isinstance(tpl, str) and (base / tpl).is_file():
                cmkd["image_template"] = str((base / tpl).resolve())
            out["cmkd"] = cmkd
        return out
