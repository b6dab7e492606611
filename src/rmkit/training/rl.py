"""The RL stage: one loop for every algorithm in :data:`rmkit.algorithms.ALGORITHMS`.

Each step runs these phases:

1. **rollout** — this process's prompts, rendered in a seeded random candidate order, get
   ``completions_per_prompt`` completions each, all generated together by the policy
   (:mod:`rmkit.training.rollout`);
2. **scoring** — verdicts parsed, rewards composed (every component logged);
3. **logprobs** — reference log-probs (KL on) and old log-probs (needed when the rollout batch
   is reused for several updates, or for k1 KL in the reward). With one update per batch the
   old log-probs equal the current ones, so the training pass uses its own detached values
   and the extra forward pass is skipped;
4. **advantages** — rewards (and token KL) of all processes are gathered so group and batch
   normalisation and the outlier filter see the whole rollout batch, exactly as one process
   with the whole batch would;
5. **update** — micro-batched clipped-surrogate loss (+ k3 KL term), ``updates_per_batch``
   optimizer steps; every micro-batch's loss is scaled by its share of the step's tokens
   (token_mean) or sequences (seq_mean, constant) over all processes, so the gradient does not
   depend on the micro-batch or process split;
6. **log/save** — metrics, samples, checkpoints (:mod:`rmkit.training.engine`).

The math (advantages, losses, KL, aggregation) is :mod:`rmkit.algorithms`; nothing here
re-derives it.
"""

from __future__ import annotations

import logging
from typing import Any

from rmkit.training.engine import (
    Run,
    StepTimer,
    accumulate,
    after_step,
    all_max,
    all_sum,
    backward,
    finish,
    optimizer_step,
    setup_run,
)

log = logging.getLogger(__name__)

# Rollout timings an engine may report (seconds; the step's slowest process is logged).
ROLLOUT_TIMES = ("prefill_s", "decode_s", "sync_s", "server_gen_s", "generator_s")


def rl_step(run: Run) -> tuple[dict[str, float], dict[str, Any]]:
    """One RL step (rollout -> rewards -> logprobs -> advantages -> update); returns metrics."""
    from rmkit.algorithms import aggregate_loss, kl_k1
    from rmkit.training.data import shard
    from rmkit.training.policy import (
        behaviour_logprobs,
        completion_logprobs,
        logprob_settings,
        micro_batch_parts,
        old_logprobs,
        reference_logprobs,
    )
    from rmkit.training.rollout import accuracy_counts, make_rollout, sample_rows, score

    cfg, rl, accel, timer = run.cfg, run.cfg.rl, run.accel, StepTimer()
    algo, settings = run.algorithm, run.settings
    # 1. rollout (a server engine first syncs the weights when due; asynchronous rollouts
    #    were submitted max_staleness steps ago)
    queue = run.extras.get("queue")
    if queue is not None:
        ro, sync = queue.next()
    else:
        sync = run.engine.prepare(run)
        if sync:
            timer.mark("sync")
        epoch, batch = run.order.next_batch()
        ro = make_rollout(run, [run.records[i] for i in shard(batch, run.rank, run.world)], epoch)
    ro.stats.update(sync)
    timer.mark("rollout")
    # 2. rewards
    totals, rewards, samples = score(run, ro)
    timer.mark("scoring")
    # 3. micro-batches (per PPO mini-batch), old / reference log-probs
    share = run.share_prompts  # no-grad passes; the grad pass too when single-process
    parts = micro_batch_parts(run, ro)
    mbs = [mb for part in parts for mb in part]
    temp = logprob_settings(rl)
    need_old = (
        rl.updates_per_batch > 1 or len(parts) > 1 or (rl.kl.mode == "k1_reward" and rl.kl.coef > 0)
    )
    if queue is not None:  # the rollout policy's weights are gone: the engine's log-probs
        old = [behaviour_logprobs(mb, ro.completions) for mb in mbs]
    else:
        old = old_logprobs(run.unwrapped, mbs, temp, share) if need_old else None
    ref = (
        reference_logprobs(run.unwrapped, run.reference, mbs, temp, share)
        if run.reference
        else None
    )
    timer.mark("logprobs")
    # 4. advantages over the whole rollout batch of all processes
    token_kl = None
    if rl.kl.mode == "k1_reward" and ref is not None:
        token_kl = [kl_k1(o, r) for o, r in zip(old, ref, strict=True)]
    adv, adv_stats = global_advantages(run, totals, mbs, token_kl)
    timer.mark("advantages")
    # 5. micro-batched loss; one optimizer step per mini-batch, rl.updates_per_batch passes
    units = [_units(mb, rl.aggregation) for mb in mbs]
    first = [sum(len(p) for p in parts[:j]) for j in range(len(parts))]  # index of each part
    part_units = all_sum(
        accel, [sum(units[f : f + len(p)]) for f, p in zip(first, parts, strict=True)]
    )
    acc = _Acc(rl.updates_per_batch * len(parts))
    acc.lr = run.scheduler.get_last_lr()[0]
    # behaviour vs trainer log-probs of the same tokens: the engine's raw log-probs are at
    # temperature 1; asynchronous rollouts' are as sampled (and from an older policy)
    gap_from_old = old is not None and queue is None and temp == 1.0
    gap_first_pass = (old is None and temp == 1.0) or queue is not None
    if gap_from_old:
        for i, mb in enumerate(mbs):
            acc.behaviour_gap(mb, old[i], ro.completions)
    for update in range(rl.updates_per_batch):
        for j, part in enumerate(parts):
            scale = run.world / max(part_units[j], 1.0)
            u = update * len(parts) + j
            for k, mb in enumerate(part):
                i = first[j] + k
                with accumulate(run, last=k == len(part) - 1):
                    logp = completion_logprobs(run.model, mb, temp, share and run.world == 1)
                    if u == 0 and gap_first_pass:  # before this step's first update
                        acc.behaviour_gap(mb, logp, ro.completions)
                    old_i = old[i] if old is not None else logp.detach()
                    tok_loss, st = algo.token_loss(
                        logp, old_i, adv[i], mb.mask, settings, ref[i] if ref is not None else None
                    )
                    loss = aggregate_loss(tok_loss, mb.mask, rl.aggregation, rl.max_new_tokens)
                    loss = loss * units[i] * scale
                    backward(run, loss)
                acc.add(
                    mb, float(loss.detach()) / run.world, st, logp,
                    ref[i] if ref is not None else None, u,
                )  # fmt: skip
            acc.grad_norms.append(optimizer_step(run))
    timer.mark("backward")
    # 6. metrics and samples
    prompt_tokens = sum(int(mb.inputs["attention_mask"].sum()) for mb in mbs)
    metrics = _step_metrics(run, ro, totals, rewards, acc, timer, adv_stats, prompt_tokens)
    correct, counted = accuracy_counts(samples)
    metrics["accuracy"] = _ratio(all_sum(accel, [correct, counted]))
    every = cfg.logging.samples_every_steps
    if every and (run.step + 1) % every == 0:
        run.logger.samples(run.step + 1, sample_rows(run.step + 1, ro, rewards, samples))
    fields = {
        "loss": metrics["loss"], "reward": metrics["reward/total"], "acc": metrics["accuracy"],
        "kl": metrics.get("policy/kl"), "len": metrics["response/length"], "s/step": timer.total(),
    }  # fmt: skip
    return metrics, fields


def _units(mb, aggregation: str) -> float:
    """A micro-batch's weight in the step's mean: tokens (token_mean) or sequences."""
    if aggregation == "token_mean":
        return float(mb.n_tokens)
    if aggregation == "seq_mean":
        return float((mb.mask.sum(dim=1) > 0).sum())
    return float(mb.mask.shape[0])


def global_advantages(run: Run, totals: list[float], mbs, token_kl):
    """Advantages from the rewards of every process; returns this process's per micro-batch."""
    import torch

    from rmkit.algorithms import compute_advantages

    accel, cfg = run.accel, run.cfg
    (width,) = all_max(accel, [max(mb.mask.shape[1] for mb in mbs)])
    width = int(width)
    mask = torch.cat([_pad_cols(mb.mask, width) for mb in mbs])
    kl = torch.cat([_pad_cols(t, width) for t in token_kl]) if token_kl is not None else None
    rewards = torch.tensor(totals, dtype=torch.float32, device=accel.device)
    g_rewards, g_mask = accel.gather(rewards), accel.gather(mask)
    g_kl = accel.gather(kl.float()) if kl is not None else None
    adv, stats = compute_advantages(
        run.algorithm, g_rewards, g_mask, run.settings,
        group_size=cfg.batch.completions_per_prompt, token_kl=g_kl,
    )  # fmt: skip
    n = len(totals)
    mine = adv[run.rank * n : (run.rank + 1) * n]
    return [mine[mb.rows, : mb.mask.shape[1]] for mb in mbs], stats


def _pad_cols(t, width: int):
    import torch.nn.functional as F

    return F.pad(t, (0, width - t.shape[1]), value=0)


class _Acc:
    """Sums over micro-batches (and optimizer steps) for the step's policy metrics."""

    def __init__(self, n_updates: int = 1) -> None:
        self.loss = self.tokens = self.clip = self.kl = self.preclip = 0.0
        self.ratio_max = self.lr = 0.0
        self.grad_norms: list[float] = []
        self.gap_sum = self.gap_max = self.gap_tokens = 0.0
        # per optimizer step u: [tokens, clip tokens, preclip tokens, ratio sum], ratio max
        self.per_update = [[0.0, 0.0, 0.0, 0.0] for _ in range(n_updates)]
        self.update_ratio_max = [0.0] * n_updates

    def behaviour_gap(self, mb, logp, completions) -> None:
        """|trainer log-prob - behaviour log-prob| of the completion tokens, for completions
        whose engine reported behaviour log-probs (a server engine)."""
        import torch

        rows = completions[mb.rows]
        if not rows or any(c.token_logprobs is None for c in rows):
            return
        beh = torch.zeros_like(logp, dtype=torch.float32)
        for i, c in enumerate(rows):
            beh[i, : len(c.token_logprobs)] = torch.tensor(c.token_logprobs)
        gap = (logp.detach().float() - beh).abs() * mb.mask
        self.gap_sum += float(gap.sum())
        self.gap_max = max(self.gap_max, float(gap.max()))
        self.gap_tokens += float(mb.mask.sum())

    def add(self, mb, loss: float, st: dict, logp, ref, update: int = 0) -> None:
        n = float(mb.n_tokens)
        self.loss += loss
        self.tokens += n
        self.clip += float(st["clip_frac"]) * n
        self.preclip += float(st["preclip_frac"]) * n
        self.ratio_max = max(self.ratio_max, float(st["ratio_max"]))
        row = self.per_update[update]
        row[0] += n
        row[1] += float(st["clip_frac"]) * n
        row[2] += float(st["preclip_frac"]) * n
        row[3] += float(st["ratio_mean"]) * n
        self.update_ratio_max[update] = max(self.update_ratio_max[update], float(st["ratio_max"]))
        if ref is not None:
            from rmkit.algorithms import kl_k3

            self.kl += float((kl_k3(logp.detach(), ref) * mb.mask).sum())


def _ratio(pair: list[float]) -> float:
    return pair[0] / pair[1] if pair[1] else float("nan")


def zero_variance_groups(totals: list[float], group: int, tol: float = 1e-6) -> tuple[float, float]:
    """``(groups whose rewards are all equal, groups)`` of one process's rollout (``totals``
    prompt-major, ``group`` completions per prompt). Equal means ``max - min <= tol``: such a
    group's rewards carry no preference between its completions, so its group-relative
    advantage is zero."""
    if group < 1 or len(totals) % group:
        raise ValueError(f"{len(totals)} rewards do not split into groups of {group}")
    flat = 0
    for start in range(0, len(totals), group):
        chunk = totals[start : start + group]
        flat += max(chunk) - min(chunk) <= tol
    return float(flat), float(len(totals) // group)


def _step_metrics(
    run, ro, totals, rewards, acc: _Acc, timer, adv_stats, seq_tokens: int
) -> dict[str, float]:
    """Global (all-process) means of the step's rewards, policy and throughput statistics."""
    accel, cfg = run.accel, run.cfg
    keys = list(rewards.components)
    local = [sum(totals), float(len(totals))]
    for key in keys:
        vals = [v for v in rewards.components[key] if v is not None]
        local += [sum(vals), float(len(vals))]
    lengths = [len(c.token_ids) for c in ro.completions]
    cut = sum(1 for c in ro.completions if c.finish_reason == "length")
    local += [acc.loss, acc.tokens, acc.clip, acc.preclip, acc.kl, float(sum(lengths)), float(cut)]
    local += [float(seq_tokens), acc.gap_sum, acc.gap_tokens]
    local += [v for row in acc.per_update for v in row]
    local += zero_variance_groups(totals, ro.record_group)  # the last two sums
    s = all_sum(accel, local)
    timing = [ro.stats.get(k, 0.0) for k in ROLLOUT_TIMES]
    ratio_max, gap_max, *rest = all_max(
        accel, [acc.ratio_max, acc.gap_max, *timing, *acc.update_ratio_max]
    )
    timing, update_max = rest[: len(timing)], rest[len(timing) :]
    n = s[1]
    m: dict[str, float] = {"loss": s[2 + 2 * len(keys)] / cfg.optimizer_steps_per_step}
    m["reward/total"] = s[0] / n
    for i, key in enumerate(keys):
        m[f"reward/{key}"] = _ratio(s[2 + 2 * i : 4 + 2 * i])
    base = 2 + 2 * len(keys)
    tokens = s[base + 1]
    m.update({k: v for k, v in adv_stats.items()})
    m["policy/clip_frac"] = s[base + 2] / max(tokens, 1.0)
    if run.settings.preclip:
        m["policy/preclip_frac"] = s[base + 3] / max(tokens, 1.0)
    if run.reference is not None:
        m["policy/kl"] = s[base + 4] / max(tokens, 1.0)
    m["policy/ratio_max"] = ratio_max
    m["response/length"] = s[base + 5] / n
    if ro.record_group > 1:  # share of prompt groups (all processes) with no reward variance
        m["rl/zero_variance_groups"] = _ratio(s[-2:])
    m["response/truncated_frac"] = s[base + 6] / n
    m["lr"] = acc.lr
    m["grad_norm"] = sum(acc.grad_norms) / len(acc.grad_norms)
    elapsed = timer.total()
    m["tokens_per_s"] = s[base + 7] / elapsed
    m["rollout/tokens_per_s"] = s[base + 5] / max(timer.times["step_time/rollout"], 1e-9)
    for key, value in zip(ROLLOUT_TIMES, timing, strict=True):
        if key in ro.stats:
            m[f"rollout/{key}"] = value
    for key in ("policy_version", "staleness"):
        if key in ro.stats:
            m[f"rollout/{key}"] = ro.stats[key]
    if s[base + 9] > 0:
        m["rollout/logprob_gap_mean"] = s[base + 8] / s[base + 9]
        m["rollout/logprob_gap_max"] = gap_max
    if len(update_max) > 1:  # per optimizer step of the rollout batch (mini-batches, passes)
        for u, rmax in enumerate(update_max):
            tok, clip, pre, rsum = s[base + 10 + 4 * u : base + 14 + 4 * u]
            tok = max(tok, 1.0)
            m[f"policy/update{u + 1}/clip_frac"] = clip / tok
            m[f"policy/update{u + 1}/ratio_mean"] = rsum / tok
            m[f"policy/update{u + 1}/ratio_max"] = rmax
            if run.settings.preclip:
                m[f"policy/update{u + 1}/preclip_frac"] = pre / tok
    m.update(timer.times)
    m["step_time/total"] = elapsed
    return m


def prepare_rl(cfg, resume: bool = False) -> Run:
    """Everything an RL run needs before its first step (see :func:`run_rl`)."""
    from rmkit.algorithms import Settings, get_algorithm
    from rmkit.prompts import get_template
    from rmkit.rewards import compose
    from rmkit.training.engines import check_generation_fits, make_engine
    from rmkit.training.evaluate import setup_eval
    from rmkit.training.rollout import suppress_media_tokens

    run = setup_run(cfg, resume, prompt_filter(cfg))
    check_generation_fits(run)
    run.extras["media_ids"] = suppress_media_tokens(run.loaded)
    run.extras.update(
        algorithm=get_algorithm(cfg.rl.algorithm),
        settings=Settings.of(cfg.rl),
        template=get_template(cfg.data.template),
        # Shared prompt passes need a KV cache: text models without gradient checkpointing.
        share_prompts=cfg.rl.shared_prompts
        and not run.loaded.is_vision
        and not cfg.weights.gradient_checkpointing,
    )
    run.extras["reward_fn"] = compose(
        cfg.rewards.components, cfg.rewards.combiner, base_dir=cfg.base_dir
    )
    try:
        run.extras["engine"] = make_engine(run)
        if cfg.rl.rollout.max_staleness:
            from rmkit.training.async_rollouts import RolloutQueue
            from rmkit.training.engine import add_checkpoint_hook

            queue = RolloutQueue(run, cfg.rl.rollout.max_staleness)
            run.extras["queue"] = queue
            add_checkpoint_hook(run, queue)
        setup_eval(run)
    except BaseException:
        run.reward_fn.close()
        raise
    run.model.train()
    return run


def run_rl(cfg, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` (stage rl) to ``cfg.output``; returns a summary of the run.

    The rollout engine (and a server it launched) is closed whatever happens: at the end, on
    an error, on Ctrl-C and on SIGTERM.
    """
    from rmkit.generation.launch import terminate_on_sigterm
    from rmkit.utils.console import Progress

    with terminate_on_sigterm():
        run = prepare_rl(cfg, resume)
        try:
            with Progress(f"rl ({cfg.rl.algorithm})", total=run.total_steps, unit="steps") as bar:
                if run.step:
                    bar.update(run.step)
                while run.step < run.total_steps:
                    metrics, fields = rl_step(run)
                    run.step += 1
                    after_step(run, metrics, bar, fields)
        finally:
            run.reward_fn.close()
            run.engine.close()
        return finish(run)


def prompt_filter(cfg):
    """A ``select`` for :func:`setup_run` dropping prompts over ``data.max_prompt_tokens``."""
    limit = cfg.data.max_prompt_tokens
    if limit is None:
        return None

    def select(loaded, records: list[dict], image_root) -> list[dict]:
        from rmkit.errors import RmkitError
        from rmkit.models.chat import prepare_inputs
        from rmkit.prompts import render_judge_messages

        keep = []
        for rec in records:
            order = list(range(len(rec["candidates"])))
            conv = render_judge_messages(rec, order, cfg.data.template, image_root)
            if prepare_inputs(loaded, [conv])["input_ids"].shape[1] <= limit:
                keep.append(rec)
        if len(keep) < len(records):
            log.warning(
                "%d of %d prompts are longer than data.max_prompt_tokens=%d and were dropped",
                len(records) - len(keep), len(records), limit,
            )  # fmt: skip
        if not keep:
            raise RmkitError(f"every prompt is longer than data.max_prompt_tokens={limit}")
        return keep

    return select
