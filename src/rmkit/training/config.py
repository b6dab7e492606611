"""Configuration of ``rmkit train`` (``kind: train`` recipes): one model for both stages.

Batch sizes name their unit. For RL, ``batch.prompts_per_step`` prompts (over all processes)
each get ``batch.completions_per_prompt`` completions, and every ``batch.prompts_per_update``
of them make one optimizer step (PPO mini-batches); for SFT, ``batch.sequences_per_step``
trace records make one optimizer step. ``batch.micro_batch_per_device`` is the number of
sequences in one forward/backward pass on one device. Derived values (RL
``sequences_per_step``, ``grad_accum_steps``) are computed once, here, for the world size of the
launch (``WORLD_SIZE``), and written into the resolved config saved with the run.

RL knobs left unset take the algorithm's defaults (``defaults`` of its class in
:mod:`rmkit.algorithms.methods`); the accepted algorithm names come from the same registry, and
the resolved values are filled in so the saved ``config.yaml`` shows what actually ran.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from rmkit.algorithms.base import (
    AGGREGATIONS,
    ALGORITHMS,
    FILTER_RULES,
    KL_MODES,
    PRECLIP_BOUNDS,
    algorithm_names,
)
from rmkit.config.validate import StrictModel
from rmkit.generation.config import LOCAL_KEYS, BackendConfig
from rmkit.models.lora import LoraSettings
from rmkit.rewards.compose import RewardSpec

AlgorithmName = Literal[algorithm_names()]  # type: ignore[valid-type]


class ModelSection(StrictModel):
    spec: str = Field("smollm2-135m", description="built-in name, model folder or hub id")
    dtype: Literal["float32", "bfloat16"] = "float32"
    init_from: str | None = Field(
        None, description="a previous stage's output: a PEFT adapter folder or a full model folder"
    )
    trust_remote_code: bool = False
    min_pixels: int | None = Field(None, gt=0)
    max_pixels: int | None = Field(None, gt=0)


class WeightsSection(StrictModel):
    mode: Literal["lora", "qlora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    freeze_vision_tower: bool = True
    freeze_projector: bool = True
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _vision_under_lora(self) -> WeightsSection:
        if self.mode != "full" and not (self.freeze_vision_tower and self.freeze_projector):
            raise ValueError(
                "with LoRA the base weights stay frozen, so freeze_vision_tower/freeze_projector "
                "must stay true; set weights.lora.include_vision: true to put adapters on the "
                "vision tower and projector, or use weights.mode: full"
            )
        return self


class DataSection(StrictModel):
    path: str = Field(description="records JSONL, or a build-data output folder (with split)")
    split: str = "train"
    image_root: str | None = Field(None, description="default: the records file's folder")
    template: str = Field("default", description="judge template name or file (RL)")
    max_prompt_tokens: int | None = Field(None, gt=0, description="RL: drop longer prompts")
    max_seq_tokens: int = Field(2048, gt=1, description="SFT: truncate longer examples")
    shuffle: bool = True


class BatchSection(StrictModel):
    prompts_per_step: int | None = Field(
        None, gt=0, description="RL: prompts per step (one rollout batch), all devices"
    )
    completions_per_prompt: int = Field(1, gt=0, description="RL: samples per prompt")
    prompts_per_update: int | None = Field(
        None,
        gt=0,
        description="RL: prompts per optimizer step, all devices (default: prompts_per_step); "
        "a smaller value splits each rollout batch into prompts_per_step / prompts_per_update "
        "PPO mini-batches",
    )
    sequences_per_step: int | None = Field(
        None, gt=0, description="SFT: records per step, all devices; RL: derived"
    )
    micro_batch_per_device: int = Field(4, gt=0, description="sequences per forward/backward")
    grad_accum_steps: int | None = Field(None, description="derived; do not set")


class OptimSection(StrictModel):
    lr: float = Field(1e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float | None = Field(1.0, gt=0)


class KLSection(StrictModel):
    mode: Literal[KL_MODES] | None = Field(  # type: ignore[valid-type]
        None, description="default: algorithm's"
    )
    coef: float | None = Field(None, ge=0)


class RolloutServerConfig(BackendConfig):
    """The inference server of ``rl.rollout.engine: server``: one running at ``base_url``, or
    one rmkit starts for the run (``launch``), serving the policy. The generation backend's
    config model; RL takes its API keys (``api_model`` optional: asked from ``/v1/models``)
    and refuses the local-model ones, since the server always serves the policy."""

    api_model_required: ClassVar[bool] = False
    max_retries: int = Field(3, ge=0, description="retries per request before the run stops")
    timeout: float = Field(600.0, gt=0, description="seconds to wait for one answer")

    @model_validator(mode="after")
    def _serves_the_policy(self) -> RolloutServerConfig:
        local = sorted(self.model_fields_set & set(LOCAL_KEYS))
        if local:
            raise ValueError(
                f"rl.rollout.server: {', '.join(local)} describe a local model; the server "
                "serves the policy (model.*): remove them"
            )
        if not self.base_url and self.launch is None:
            raise ValueError(
                "give rl.rollout.server.base_url (a running server) or rl.rollout.server.launch "
                "(a server rmkit starts)"
            )
        return self


class RolloutSection(StrictModel):
    """Where rollouts are generated (:mod:`rmkit.training.engines`)."""

    engine: Literal["local", "server"] = Field("local", description="local or server")
    batch_size: int | None = Field(
        None, gt=0, description="local: sequences per generate call (default: all of the step)"
    )
    decoder: Literal["auto", "generate"] = Field(
        "auto",
        description="local: auto (shared-prompt decoder for Llama/Qwen2 text models) or generate",
    )
    dtype: Literal["float32", "bfloat16"] | None = Field(
        None, description="local: bfloat16 generates with a bf16 copy of the weights"
    )
    merge_lora: bool = Field(
        True, description="local: generate with LoRA folded into the weights (restored after)"
    )
    server: RolloutServerConfig | None = None
    max_staleness: int = Field(
        0,
        ge=0,
        description="asynchronous rollouts: step t's rollout comes from the policy after step "
        "t - max_staleness, generated while earlier steps train (0: synchronous)",
    )
    threads: int | None = Field(
        None, gt=0, description="local engine, max_staleness > 0: CPU threads of the generator"
    )
    sync_every: int = Field(1, ge=1, description="server: steps between weight syncs")
    keep_adapters: int = Field(
        2, ge=1, description="server: adapter versions kept loaded (at least max_staleness + 1)"
    )
    sync_dir: str | None = Field(
        None, description="server: folder the server reads synced weights from (default: in output)"
    )
    check_prompt_ids: bool = Field(
        True, description="server: stop when its prompt tokens differ from the trainer's"
    )
    ready_timeout_s: float = Field(
        60.0, gt=0, description="server at base_url: seconds to wait until it answers"
    )

    @model_validator(mode="after")
    def _engine_fits(self) -> RolloutSection:
        if self.engine == "server" and self.server is None:
            raise ValueError(
                "rl.rollout.engine: server needs rl.rollout.server with base_url (a running "
                "OpenAI-compatible server with vLLM's extensions) or launch: {kind: vllm|rmkit}"
            )
        if self.engine == "local" and self.server is not None:
            raise ValueError("rl.rollout.server is set but rl.rollout.engine is local")
        if self.max_staleness and self.sync_every != 1:
            raise ValueError(
                "rl.rollout.max_staleness needs rl.rollout.sync_every: 1 (step t's rollout comes "
                "from the policy after step t - max_staleness exactly)"
            )
        if self.threads is not None and not (self.engine == "local" and self.max_staleness):
            raise ValueError(
                "rl.rollout.threads sets the local generator process's threads: it needs "
                "rl.rollout.engine: local and rl.rollout.max_staleness > 0"
            )
        if self.max_staleness and self.keep_adapters < self.max_staleness + 1:
            object.__setattr__(self, "keep_adapters", self.max_staleness + 1)
        return self


_MOVED_ROLLOUT_KEYS = {
    "rollout_batch_size": "rl.rollout.batch_size",
    "rollout_decoder": "rl.rollout.decoder",
    "rollout_dtype": "rl.rollout.dtype",
    "merge_lora_for_rollout": "rl.rollout.merge_lora",
}


class RLSection(StrictModel):
    algorithm: AlgorithmName = Field(  # type: ignore[valid-type]
        "grpo", description="rmkit.algorithms.methods: " + ", ".join(ALGORITHMS)
    )
    temperature: float = Field(1.0, ge=0, description="0: greedy (log-probs at temperature 1)")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="rollout top-k (0: off)")
    repetition_penalty: float = Field(
        1.0, gt=0, description="rollout repetition penalty (1.0: off; never the checkpoint's)"
    )
    policy_logprobs: Literal["temperature", "sampler"] = Field(
        "temperature",
        description="loss log-probs: softmax(logits / T) (TRL, ms-swift, OpenRLHF) or the "
        "sampler's exact distribution (repetition penalty, T, top-k, top-p)",
    )
    max_new_tokens: int = Field(256, gt=0)
    mirror_orders: bool = Field(
        False,
        description="half of each prompt's completions see the candidates in its seeded order, "
        "half in the reverse order (one group): a verdict that follows the position instead of "
        "the content earns unequal rewards within its group",
    )
    clip_low: float | None = Field(None, ge=0, lt=1)
    clip_high: float | None = Field(None, ge=0)
    preclip: bool | None = Field(None, description="clamp the log-ratio before exp")
    preclip_bounds: tuple[float, float] = PRECLIP_BOUNDS
    filter_rule: Literal[FILTER_RULES] | None = Field(  # type: ignore[valid-type]
        None, description="advantage outlier filter: paper or released (stable_reinforce)"
    )
    filter_sigma: float | None = Field(None, gt=0, description="outlier filter (stable_reinforce)")
    kl: KLSection = Field(default_factory=KLSection)
    aggregation: Literal[AGGREGATIONS] | None = None  # type: ignore[valid-type]
    updates_per_batch: int = Field(1, ge=1)
    reward_clip: float | None = Field(None, gt=0, description="default: algorithm's")
    shared_prompts: bool = Field(
        True, description="run each prompt once per micro-batch in log-prob passes (text models)"
    )
    rollout: RolloutSection = Field(default_factory=RolloutSection)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in _MOVED_ROLLOUT_KEYS.items():
                if old in data:
                    raise ValueError(f"rl.{old} is now {new} (rollout settings moved)")
        return data

    def resolve(self) -> RLSection:
        """Fill unset knobs from the algorithm's defaults and check they apply to it."""
        algo = ALGORITHMS[self.algorithm]
        d = algo.defaults
        given = self.model_fields_set
        users = {  # knob -> the algorithms it applies to
            "filter_rule": [n for n, a in ALGORITHMS.items() if a.filter_rules],
            "filter_sigma": [n for n, a in ALGORITHMS.items() if a.filter_rules],
        }
        for knob, names in users.items():
            if knob in given and getattr(self, knob) is not None and self.algorithm not in names:
                raise ValueError(
                    f"rl.{knob} applies to {', '.join(names)} only (algorithm is "
                    f"'{self.algorithm}'); remove it or set rl.algorithm: {names[0]}"
                )
        mode = self.kl.mode if self.kl.mode is not None else d.kl_mode
        if mode not in algo.kl_modes:
            raise ValueError(
                f"rl.kl.mode {mode} does not fit '{self.algorithm}' ({algo.summary}): use "
                + " or ".join(algo.kl_modes)
            )
        coef = self.kl.coef if self.kl.coef is not None else d.kl_coef
        if mode == "none":
            coef = 0.0
        values: dict[str, Any] = {
            "clip_low": self.clip_low if self.clip_low is not None else d.clip_low,
            "clip_high": self.clip_high if self.clip_high is not None else d.clip_high,
            "preclip": self.preclip if self.preclip is not None else d.preclip,
            "filter_rule": self.filter_rule or d.filter_rule,
            "filter_sigma": self.filter_sigma or d.filter_sigma,
            "kl": KLSection(mode=mode, coef=coef),
            "aggregation": self.aggregation or d.aggregation,
            "reward_clip": self.reward_clip if "reward_clip" in given else d.reward_clip,
        }
        lo, hi = self.preclip_bounds
        if not lo < 0 < hi:
            raise ValueError(
                f"rl.preclip_bounds must be (lo < 0, hi > 0), got {self.preclip_bounds}"
            )
        return self.model_copy(update=values)


class RewardsSection(StrictModel):
    preset: str | None = Field(None, description="msrl-text, msrl, r1-reward, unified-think")
    components: list[RewardSpec] = Field(default_factory=list)
    combiner: Literal["sum", "r1"] | None = None

    @model_validator(mode="after")
    def _known(self) -> RewardsSection:
        from rmkit.rewards.compose import REWARDS, preset

        if self.preset is not None:
            if self.components:
                raise ValueError("give rewards.preset or rewards.components, not both")
            specs, combiner = preset(self.preset)
            object.__setattr__(self, "components", specs)
            object.__setattr__(self, "combiner", self.combiner or combiner)
            object.__setattr__(self, "preset", None)  # expanded: the saved config lists them
            return self
        for spec in self.components:
            if spec.name not in REWARDS and ":" not in spec.name:
                raise ValueError(
                    f"reward '{spec.name}' is neither built-in ({', '.join(REWARDS)}) nor "
                    "'module:function' / 'file.py:function'"
                )
        if self.combiner is None:
            object.__setattr__(self, "combiner", "sum")
        return self


class EvalSection(StrictModel):
    every_steps: int | None = Field(None, gt=0, description="held-out judge accuracy every N steps")
    path: str | None = Field(None, description="preference records (default: data.path)")
    split: str = "val"
    max_records: int = Field(64, gt=0)
    max_new_tokens: int = Field(256, gt=0, description="SFT runs (RL uses rl.max_new_tokens)")


class CheckpointSection(StrictModel):
    every_steps: int | None = Field(100, gt=0, description="null: only the final output")
    keep_last: int = Field(2, ge=1)


class LoggingSection(StrictModel):
    every_steps: int = Field(1, gt=0)
    samples_every_steps: int | None = Field(10, gt=0, description="RL: save completions")
    tensorboard: bool = True
    plot: bool = True


class TrainConfig(StrictModel):
    kind: Literal["train"] = "train"
    stage: Literal["sft", "rl"]
    model: ModelSection = Field(default_factory=ModelSection)
    weights: WeightsSection = Field(default_factory=WeightsSection)
    data: DataSection
    batch: BatchSection = Field(default_factory=BatchSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    rl: RLSection | None = None
    rewards: RewardsSection | None = None
    max_steps: int | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    seed: int = 0
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    output: str | None = None
    export_merged: bool = False
    base_dir: str | None = Field(None, description="the recipe's folder (set when loading)")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.max_steps is None and self.epochs is None:
            raise ValueError(
                "set max_steps and/or epochs (training stops at whichever comes first)"
            )
        if self.stage == "sft":
            self._check_sft()
        else:
            self._check_rl()
        return self

    def _check_sft(self) -> None:
        if self.rl is not None or self.rewards is not None:
            raise ValueError("'rl' and 'rewards' belong to stage: rl; remove them for stage: sft")
        b = self.batch
        if (
            b.prompts_per_step is not None
            or b.prompts_per_update is not None
            or b.completions_per_prompt != 1
        ):
            raise ValueError(
                "stage sft counts batch.sequences_per_step (trace records per step); "
                "remove batch.prompts_per_step / prompts_per_update / completions_per_prompt"
            )
        if b.sequences_per_step is None:
            raise ValueError(
                "stage sft needs batch.sequences_per_step (records per optimizer step)"
            )
        self._set_accum(b.sequences_per_step, "batch.sequences_per_step")

    def _check_rl(self) -> None:
        rl = (self.rl or RLSection()).resolve()
        object.__setattr__(self, "rl", rl)
        if self.rewards is None or not self.rewards.components:
            raise ValueError("stage rl needs rewards, e.g. rewards: {preset: msrl-text}")
        b = self.batch
        if b.prompts_per_step is None:
            raise ValueError("stage rl needs batch.prompts_per_step (prompts per rollout batch)")
        if ALGORITHMS[rl.algorithm].needs_groups and b.completions_per_prompt < 2:
            raise ValueError(
                f"{rl.algorithm} compares completions of the same prompt: set "
                "batch.completions_per_prompt to 2 or more (the papers use 8)"
            )
        if rl.mirror_orders and b.completions_per_prompt % 2:
            raise ValueError(
                "rl.mirror_orders splits each prompt's completions between two candidate orders: "
                f"batch.completions_per_prompt must be even (got {b.completions_per_prompt})"
            )
        world = world_size()
        if b.prompts_per_step % world:
            raise ValueError(
                f"batch.prompts_per_step {b.prompts_per_step} does not split over {world} "
                "processes; make it a multiple of the process count"
            )
        seqs = b.prompts_per_step * b.completions_per_prompt
        if b.sequences_per_step not in (None, seqs):
            raise ValueError(
                f"batch.sequences_per_step is derived for RL (prompts x completions = {seqs}); remove it"
            )
        object.__setattr__(b, "sequences_per_step", seqs)
        per_update = b.prompts_per_update or b.prompts_per_step
        if b.prompts_per_step % per_update:
            raise ValueError(
                f"batch.prompts_per_update {per_update} must divide batch.prompts_per_step "
                f"{b.prompts_per_step} (each rollout batch splits into equal mini-batches)"
            )
        if per_update % world:
            raise ValueError(
                f"batch.prompts_per_update {per_update} does not split over {world} processes; "
                "make it a multiple of the process count"
            )
        object.__setattr__(b, "prompts_per_update", per_update)
        self._set_accum(per_update * b.completions_per_prompt, "batch.prompts_per_update")

    def _set_accum(self, sequences: int, name: str) -> None:
        b, world = self.batch, world_size()
        if sequences % world:
            raise ValueError(
                f"{name}: {sequences} sequences per step do not split over {world} processes"
            )
        accum = math.ceil(sequences // world / b.micro_batch_per_device)
        if b.grad_accum_steps not in (None, accum):
            raise ValueError(
                f"batch.grad_accum_steps is derived ({accum} for {world} process(es)); remove it"
            )
        object.__setattr__(b, "grad_accum_steps", accum)

    @property
    def sequences_per_device(self) -> int:
        return self.batch.sequences_per_step // world_size()

    @property
    def mini_batches(self) -> int:
        """RL: optimizer steps per pass over a rollout batch (PPO mini-batches); SFT: 1."""
        b = self.batch
        return b.prompts_per_step // b.prompts_per_update if self.stage == "rl" else 1

    @property
    def optimizer_steps_per_step(self) -> int:
        """Optimizer steps one training step takes: RL mini-batches x passes; SFT 1."""
        return self.mini_batches * self.rl.updates_per_batch if self.stage == "rl" else 1

    @classmethod
    def resolve_paths(cls, data: dict, base: Path) -> dict:
        """Make relative data/model/template/reward paths in a recipe relative to its folder."""
        data = dict(data)
        data["base_dir"] = str(base)
        section = data.get("data")
        if isinstance(section, dict):
            section = dict(section)
            for key in ("path", "image_root"):
                if isinstance(section.get(key), str):
                    section[key] = _abs(section[key], base)
            tpl = section.get("template")
            if isinstance(tpl, str) and (tpl.endswith((".jinja", ".j2")) or "/" in tpl):
                section["template"] = _abs(tpl, base)
            data["data"] = section
        model = data.get("model")
        if isinstance(model, dict):
            model = dict(model)
            if isinstance(model.get("init_from"), str):
                model["init_from"] = _abs(model["init_from"], base)
            if isinstance(model.get("spec"), str):
                model["spec"] = _local_or_name(model["spec"], base)
            data["model"] = model
        ev = data.get("eval")
        if isinstance(ev, dict) and isinstance(ev.get("path"), str):
            data["eval"] = {**ev, "path": _abs(ev["path"], base)}
        return data


def _abs(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _local_or_name(value: str, base: Path) -> str:
    """A model spec: a relative folder becomes absolute; names and hub ids stay as they are."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    if value.startswith(("./", "../")) or (base / p).is_dir():
        return str((base / p).resolve())
    return value


def world_size() -> int:
    """Processes of this launch (``WORLD_SIZE`` set by accelerate/torchrun; 1 otherwise)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1
