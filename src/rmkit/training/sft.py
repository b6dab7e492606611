"""The SFT stage: next-token cross-entropy on the final assistant turn of trace records.

Each step takes ``batch.sequences_per_step`` records (over all processes), tokenises them with
the model's chat template (:func:`rmkit.models.chat.encode_sft`: labels only on the assistant
target), and runs ``grad_accum_steps`` micro-batches of ``micro_batch_per_device`` sequences.
The loss is the token mean over every supervised token of the step on all processes: each
micro-batch contributes ``sum of its token losses / step token count``, with the count summed
over processes first, so the result does not depend on how the step is split into
micro-batches or processes. The vision tower/projector train or stay frozen per
``weights`` (see :mod:`rmkit.training.model`).
"""

from __future__ import annotations

import logging
from typing import Any

from rmkit.training.engine import (
    Run,
    StepTimer,
    accumulate,
    after_step,
    all_sum,
    backward,
    finish,
    optimizer_step,
    setup_run,
)

log = logging.getLogger(__name__)

IGNORE = -100


def encode_example(run: Run, record: dict) -> dict:
    """One trace record as model inputs with SFT labels, cut to ``data.max_seq_tokens``."""
    from rmkit.models.chat import SEQUENCE_KEYS, encode_sft
    from rmkit.training.data import resolve_messages

    ex = encode_sft(
        run.loaded, resolve_messages(record["messages"], run.image_roots or [run.image_root])
    )
    limit = run.cfg.data.max_seq_tokens
    if len(ex["input_ids"]) > limit:
        prompt_len = int((ex["labels"] == IGNORE).long().cumprod(0).sum())
        if run.loaded.is_vision and prompt_len >= limit:
            from rmkit.errors import RmkitError

            raise RmkitError(
                f"record {record['id']}: the prompt alone has {prompt_len} tokens, more than "
                f"data.max_seq_tokens={limit}; cutting it would cut image tokens",
                hint="raise data.max_seq_tokens or lower the image resolution (model.max_pixels)",
            )
        run.extras["truncated"] = run.extras.get("truncated", 0) + 1
        ex = {k: (v[:limit] if k in SEQUENCE_KEYS else v) for k, v in ex.items()}
    return ex


def supervised_tokens(ex: dict) -> int:
    """Tokens the loss counts: labels other than -100 after the one-token shift."""
    return int((ex["labels"][1:] != IGNORE).sum())


def chunk_loss(model, inputs: dict, labels):
    """Summed token loss of one micro-batch; the output head runs only where a label is counted
    (``logits_to_keep`` = :func:`~rmkit.algorithms.supervised_mask`), falling back to full
    logits for a model that does not take a position mask."""
    from rmkit.algorithms import sft_loss, sft_loss_selected, supervised_mask

    mask = supervised_mask(labels)
    if bool(mask.any()):
        try:
            logits = model(**inputs, use_cache=False, logits_to_keep=mask).logits
        except TypeError:
            logits = None
        if logits is not None and logits.dim() == 2 and logits.shape[0] == int(mask.sum()):
            return sft_loss_selected(logits, labels, mask, reduction="sum")
    logits = model(**inputs, use_cache=False).logits
    return sft_loss(logits, labels, reduction="sum")


def sft_step(run: Run) -> tuple[dict[str, float], dict[str, Any]]:
    from rmkit.models.chat import collate
    from rmkit.training.data import shard

    cfg, accel, timer = run.cfg, run.accel, StepTimer()
    _, batch = run.order.next_batch()
    examples = [encode_example(run, run.records[i]) for i in shard(batch, run.rank, run.world)]
    local = [
        sum(supervised_tokens(e) for e in examples),
        sum(len(e["input_ids"]) for e in examples),
    ]
    n_sup, n_all = all_sum(accel, local)
    timer.mark("data")
    size = cfg.batch.micro_batch_per_device
    chunks = [examples[i : i + size] for i in range(0, len(examples), size)]
    loss_sum = 0.0
    for k, chunk in enumerate(chunks):
        inputs = {key: v.to(accel.device) for key, v in collate(run.loaded, chunk).items()}
        labels = inputs.pop("labels")
        with accumulate(run, last=k == len(chunks) - 1):
            total = chunk_loss(run.model, inputs, labels)
            # DDP averages gradients over processes; scale so the result is the global token mean.
            backward(run, total * run.world / max(n_sup, 1.0))
        loss_sum += float(total.detach())
    timer.mark("backward")
    lr = run.scheduler.get_last_lr()[0]
    grad_norm = optimizer_step(run)
    timer.mark("optimizer")
    (loss_total,) = all_sum(accel, [loss_sum])
    elapsed = timer.total()
    metrics = {
        "loss": loss_total / max(n_sup, 1.0),
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens/supervised": n_sup,
        "tokens_per_s": n_all / elapsed,
        **timer.times,
    }
    return metrics, {"loss": metrics["loss"], "s/step": elapsed}


def run_sft(cfg, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` (stage sft) to ``cfg.output``; returns a summary of the run."""
    from rmkit.training.evaluate import setup_eval
    from rmkit.utils.console import Progress

    run = setup_run(cfg, resume)
    setup_eval(run)
    run.model.train()
    with Progress("sft", total=run.total_steps, unit="steps") as bar:
        if run.step:
            bar.update(run.step)
        while run.step < run.total_steps:
            metrics, fields = sft_step(run)
            run.step += 1
            after_step(run, metrics, bar, fields)
    if run.extras.get("truncated"):
        log.warning(
            "%d example(s) were cut to data.max_seq_tokens=%d",
            run.extras["truncated"],
            cfg.data.max_seq_tokens,
        )
    return finish(run)
