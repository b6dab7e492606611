"""The RL rollout and scoring phases.

Rollout: every prompt of this process's share of the step is rendered with the judge template
in a seeded random candidate order (one order per prompt, shared by its completions so the
group compares like with like; with ``rl.mirror_orders`` half the group sees that order and
half its reverse), and all completions of the step are generated together, in as few
``generate`` calls as the rollout batch size allows, by the policy itself in eval mode.

Scoring: each completion becomes a :class:`rmkit.rewards.RewardSample` (verdict parsed, label
mapped to the shown position) and the composed rewards score the whole batch at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Rollout:
    """One step's completions on this process, ``group`` per rendered prompt, prompt-major.

    A rendered prompt is a record in one candidate order. With ``rl.mirror_orders`` each record
    is rendered twice (its order, then the reverse; ``views`` = 2), adjacent, so a record's
    ``group * views`` completions are contiguous: one advantage group.
    """

    records: list[dict[str, Any]]  # one per rendered prompt
    orders: list[list[int]]
    conversations: list[list[dict]]  # one per rendered prompt
    completions: list[Any]  # Completion objects, len = len(records) * group
    group: int
    stats: dict[str, float] = field(default_factory=dict)
    views: int = 1

    @property
    def record_group(self) -> int:
        """Completions per record: the unit of a group advantage."""
        return self.group * self.views

    def sequence_conversations(self) -> list[list[dict]]:
        return [c for c in self.conversations for _ in range(self.group)]

    def token_ids(self) -> list[list[int]]:
        return [list(c.token_ids) for c in self.completions]


def rollout_seed(seed: int, step: int, rank: int) -> int:
    """A sampling seed for (run seed, step, process): fixed, so a resumed run samples alike."""
    digest = hashlib.sha256(f"rollout:{seed}:{step}:{rank}".encode()).hexdigest()
    return int(digest[:8], 16)


def render_rollout(run, records: list[dict], epoch: int, step: int):
    """``(records, orders, conversations, params)`` of step ``step``'s rollout: each record
    rendered with the judge template in its seeded candidate order (with ``rl.mirror_orders``
    also in the reverse order, right after it, each view getting half the completions), sampled
    with the step's seed. The records come back once per rendered prompt."""
    from rmkit.generation.base import SamplingParams
    from rmkit.prompts import render_judge_messages
    from rmkit.training.data import judge_order

    cfg = run.cfg
    views = 2 if cfg.rl.mirror_orders else 1
    orders = [judge_order(r, cfg.seed, epoch) for r in records]
    if views == 2:
        records = [r for r in records for _ in range(2)]
        orders = [o for order in orders for o in (order, order[::-1])]
    convs = [
        render_judge_messages(r, o, run.template, image_root=run.image_root)
        for r, o in zip(records, orders, strict=True)
    ]
    params = SamplingParams(
        n=cfg.batch.completions_per_prompt // views,
        temperature=cfg.rl.temperature,
        top_p=cfg.rl.top_p,
        max_new_tokens=cfg.rl.max_new_tokens,
        seed=rollout_seed(cfg.seed, step, run.rank),
        top_k=cfg.rl.top_k,
        repetition_penalty=cfg.rl.repetition_penalty,
    )
    return records, orders, convs, params


def make_rollout(run, records: list[dict], epoch: int) -> Rollout:
    """Render and generate ``cfg.batch.completions_per_prompt`` completions per record with
    the run's rollout engine (:mod:`rmkit.training.engines`), now."""
    records, orders, convs, params = render_rollout(run, records, epoch, run.step)
    per_prompt, stats = run.engine.generate(run, convs, params)
    return assemble_rollout(run, records, orders, convs, per_prompt, stats, params.n)


def assemble_rollout(run, records, orders, convs, per_prompt, stats: dict, group: int) -> Rollout:
    """A :class:`Rollout` from an engine's completions (each must carry token ids)."""
    completions = [c for row in per_prompt for c in row]
    for c in completions:
        if not c.token_ids:
            from rmkit.errors import RmkitError

            raise RmkitError("the generation backend returned a completion without token ids")
    stats = dict(stats)
    stats["generated_tokens"] = sum(len(c.token_ids) for c in completions)
    views = 2 if run.cfg.rl.mirror_orders else 1
    return Rollout(records, orders, convs, completions, group, stats, views)


def rollout_dtype(name: str | None, model):
    """The dtype generation runs in, or None to keep the model's own (see ``merged_lora``).

    With ``bfloat16`` the sampled tokens come from a bf16 copy of the policy; log-probs for the
    loss are computed by the training forward pass in the model's own dtype, as with any rollout
    engine that samples in lower precision than it trains.
    """
    import torch

    if name is None:
        return None
    dtype = getattr(torch, name)
    return None if dtype == getattr(model, "dtype", None) else dtype


def score(run, ro: Rollout) -> tuple[list[float], Any, list]:
    """Rewards for every completion: ``(totals, RewardBatch, samples)``."""
    from rmkit.rewards import make_sample

    samples = []
    for i, comp in enumerate(ro.completions):
        p = i // ro.group
        samples.append(
            make_sample(
                ro.records[p],
                ro.orders[p],
                comp.text,
                template=run.template,
                n_tokens=len(comp.token_ids),
                index=i % ro.record_group,
                messages=ro.conversations[p],
            )
        )
    batch = run.reward_fn(samples)
    return batch.total, batch, samples


def accuracy_counts(samples: list) -> tuple[float, float]:
    """(correct, counted): verdicts that pick the labelled shown position, over labelled samples."""
    counted = [s for s in samples if s.label is not None and s.label_kind == "preferred"]
    correct = sum(1 for s in counted if s.verdict.choice == s.label)
    return float(correct), float(len(counted))


def sample_rows(step: int, ro: Rollout, batch, samples: list) -> list[dict[str, Any]]:
    """Rows for ``samples/step-K.jsonl``: what was shown, what came back, how it scored."""
    rows = []
    for i, (comp, s) in enumerate(zip(ro.completions, samples, strict=True)):
        p = i // ro.group
        row = {
            "step": step,
            "id": ro.records[p].get("id"),
            "order": ro.orders[p],
            "label_shown": s.label,
            "choice": s.verdict.choice,
            "completion": comp.text,
            "n_tokens": len(comp.token_ids),
            "token_ids": list(comp.token_ids),
            "finish_reason": comp.finish_reason,
            "policy_version": comp.policy_version,
            "reward": batch.total[i],
            "components": {k: v[i] for k, v in batch.components.items()},
        }
        if i % ro.group == 0:
            row["prompt"] = ro.conversations[p]
        rows.append(row)
    return rows


def image_root_for(cfg, records_path: Path) -> Path:
    return Path(cfg.data.image_root) if cfg.data.image_root else records_path.parent


_MEDIA_TOKENS = ("image_token", "video_token", "fake_image_token", "global_image_token",
                 "vision_start_token", "vision_end_token", "boi_token", "eoi_token")  # fmt: skip


def suppress_media_tokens(loaded) -> list[int]:
    """Forbid a vision-language policy to generate image/video placeholder tokens.

    A completion holding such a token cannot be scored by a forward pass (the model expects
    pixels for every placeholder), so they are added to the generation config's
    ``suppress_tokens``. Returns the suppressed ids (none for text models).
    """
    if not loaded.is_vision:
        return []
    tok = loaded.tokenizer
    ids = set()
    for attr in _MEDIA_TOKENS:
        text = getattr(loaded.processor, attr, None)
        if isinstance(text, str):
            tid = tok.convert_tokens_to_ids(text)
            if isinstance(tid, int) and tid != tok.unk_token_id:
                ids.add(tid)
    config = loaded.model.config
    for name in (
        "image_token_id",
        "video_token_id",
        "vision_start_token_id",
        "vision_end_token_id",
        "image_token_index",
    ):
        value = getattr(config, name, None)
        if isinstance(value, int):
            ids.add(value)
    gen = loaded.model.generation_config
    gen.suppress_tokens = sorted(set(gen.suppress_tokens or []) | ids)
    return sorted(ids)
