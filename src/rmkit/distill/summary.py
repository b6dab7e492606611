"""Usage accounting and the ``summary.json`` of a distill run.

Counts come from the done-log (so they cover every run that worked on the folder). Tokens of an
API teacher come from the done-log too: each record's done line holds the token usage of its
samples, split into *paid* (answered by a request of the run that finished the record) and
*cached* (answered from the request cache with the usage recorded when it was first paid: the
answers an interrupted run had already received, or identical requests). So after any number of
interruptions ``tokens`` (paid + cached) is exactly what one uninterrupted run reports. Calls,
retries and failures come from the usage log, written every ``chunk_records`` records and at the
end (a killed run loses the part since its last row; the rerun answers those requests from the
cache and counts them as ``cache_hits``). A local generator has no cache: its tokens come from
the usage log.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rmkit.distill.config import DistillConfig, PricingConfig

USAGE_KEYS = (
    "api_calls",
    "paid_calls",
    "cache_hits",
    "retries",
    "sequences",
    "prompt_tokens",
    "completion_tokens",
)


def usage_snapshot(stats: dict[str, Any]) -> dict[str, Any]:
    """A backend's cumulative counters in one vocabulary (API and local backends differ).

    API backends count ``api_calls`` (HTTP requests, retries included), ``successes`` (answers
    received: the calls that are paid for) and ``cache_hits``; the local backend counts
    ``sequences`` and ``generated_tokens``.
    """
    return {
        "api_calls": int(stats.get("api_calls", 0)),
        "paid_calls": int(stats.get("successes", 0)),
        "cache_hits": int(stats.get("cache_hits", 0)),
        "retries": int(stats.get("retries", 0)),
        "sequences": int(stats.get("sequences", 0)),
        "prompt_tokens": int(stats.get("prompt_tokens", 0)),
        "completion_tokens": int(stats.get("completion_tokens", stats.get("generated_tokens", 0))),
        "failures": dict(stats.get("failures") or {}),
    }


def usage_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``after - before`` for two :func:`usage_snapshot` results (failures per kind)."""
    out: dict[str, Any] = {k: after[k] - before[k] for k in USAGE_KEYS}
    failures = {
        k: v - before["failures"].get(k, 0)
        for k, v in after["failures"].items()
        if v - before["failures"].get(k, 0)
    }
    out["failures"] = failures
    return out


TOKEN_KEYS = ("prompt", "completion", "cached_prompt", "cached_completion", "cached_samples")


def sample_tokens(completions: list[Any]) -> dict[str, int]:
    """Token usage of one record's completions, paid vs answered from the cache.

    A completion with ``cached`` set counts under ``cached_*`` (and ``cached_samples``); its
    ``prompt_tokens``/``completion_tokens`` are the server's usage report (a missing prompt
    count is 0, a missing completion count falls back to ``n_tokens``).

    >>> from rmkit.generation.base import Completion
    >>> a = Completion("x", 3, None, "stop", prompt_tokens=10, completion_tokens=3)
    >>> b = Completion("y", 5, None, "stop", prompt_tokens=10, completion_tokens=5, cached=True)
    >>> sample_tokens([a, b])
    {'prompt': 10, 'completion': 3, 'cached_prompt': 10, 'cached_completion': 5, 'cached_samples': 1}
    """
    out = dict.fromkeys(TOKEN_KEYS, 0)
    for c in completions:
        prompt = c.prompt_tokens or 0
        completion = c.completion_tokens if c.completion_tokens is not None else c.n_tokens
        if c.cached:
            out["cached_prompt"] += prompt
            out["cached_completion"] += completion
            out["cached_samples"] += 1
        else:
            out["prompt"] += prompt
            out["completion"] += completion
    return out


class UsageTracker:
    """Logs a backend's usage to the run state as deltas of its counters (:meth:`flush`)."""

    def __init__(self, state: Any, who: str, backend: Any):
        import threading

        self.state, self.who, self.backend = state, who, backend
        self.last = usage_snapshot(backend.stats)
        # flush runs on the main thread and, per answered request, on the backend's thread
        self._lock = threading.Lock()

    def pending(self) -> dict[str, Any]:
        """Usage since the last flush (not yet in the usage log)."""
        return usage_delta(self.last, usage_snapshot(self.backend.stats))

    def flush(self) -> None:
        """Append the usage since the last flush to the usage log (nothing when there is none)."""
        with self._lock:
            now = usage_snapshot(self.backend.stats)
            delta = usage_delta(self.last, now)
            if delta["failures"] or any(delta[k] for k in USAGE_KEYS):
                self.state.add_usage({"who": self.who, **delta})
            self.last = now


def estimate_cost(
    prompt_tokens: int, completion_tokens: int, pricing: PricingConfig
) -> float | None:
    """Cost of the tokens at the configured per-million prices (a missing price counts 0);
    None when no price is configured.

    >>> estimate_cost(2_000_000, 500_000, PricingConfig(input_per_1m=2.5, output_per_1m=10))
    10.0
    """
    if not pricing.known:
        return None
    cost = prompt_tokens / 1e6 * (pricing.input_per_1m or 0.0)
    cost += completion_tokens / 1e6 * (pricing.output_per_1m or 0.0)
    return round(cost, 6)


def count_entries(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over done-log entries: samples requested, kept, rejected, reasons, records."""
    by_reason: Counter = Counter()
    skipped: Counter = Counter()
    record_reasons: Counter = Counter()
    difficulty: Counter = Counter()
    totals = {
        "requested": 0,
        "kept": 0,
        "rejected": 0,
        "rl_records": 0,
        "sft_records": 0,
        "dropped_records": 0,
        "hard_records": 0,
        "attempts_made": 0,
    }
    cmkd = {"targets": 0, "pseudo_labelled": 0, "without_confidence": 0}
    for e in entries:
        totals["requested"] += e.get("samples", 0)
        totals["kept"] += e.get("kept", 0)
        totals["rejected"] += e.get("rejected", 0)
        totals["rl_records"] += int(bool(e.get("rl")))
        totals["sft_records"] += int(e.get("kept", 0) > 0)
        totals["dropped_records"] += int(bool(e.get("dropped")))
        totals["hard_records"] += int(bool(e.get("hard")))
        if "difficulty" in e:
            difficulty[e["difficulty"]] += 1
            totals["attempts_made"] += e.get("attempts", 0)
        by_reason.update(e.get("reasons") or {})
        reason = e.get("record_reason")
        if reason and e.get("skipped"):
            skipped[reason] += 1
        elif reason:
            record_reasons[reason] += 1
        if e.get("target"):
            cmkd["targets"] += 1
            cmkd["pseudo_labelled"] += int(bool(e.get("pseudo_label")))
            cmkd["without_confidence"] += int(e.get("confidence") is False)
    return {
        **totals,
        "by_reason": dict(sorted(by_reason.items())),
        "skipped": dict(sorted(skipped.items())),
        "records_without_trace": dict(sorted(record_reasons.items())),
        "by_difficulty": {str(k): v for k, v in sorted(difficulty.items())},
        "cmkd": cmkd,
    }


def build_summary(
    cfg: DistillConfig,
    n_records: int,
    entries: list[dict[str, Any]],
    usage: dict[str, Any],
    consistency_usage: dict[str, Any] | None,
    *,
    complete: bool,
    elapsed_s: float,
    record_tokens: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` object (see ``docs/distill.md``).

    ``record_tokens`` (an API teacher): the done-log's token totals (keys of
    :data:`TOKEN_KEYS`); without it the tokens are the usage log's (a local generator).
    """
    counts = count_entries(entries)
    tokens = token_summary(usage, record_tokens)
    cost = estimate_cost(tokens["prompt"], tokens["completion"], cfg.pricing)
    paid_cost = estimate_cost(tokens["paid"]["prompt"], tokens["paid"]["completion"], cfg.pricing)
    out: dict[str, Any] = {
        "mode": cfg.mode,
        "teacher": cfg.teacher.name,
        "template": cfg.template,
        "samples_per_record": cfg.sampling.samples,
        "complete": complete,
        "records": n_records,
        "records_done": len(entries),
        "requested": counts["requested"],
        "kept": counts["kept"],
        "rejected": counts["rejected"],
        "by_reason": counts["by_reason"],
        "skipped_records": counts["skipped"],
        "records_without_trace": counts["records_without_trace"],
        "api_calls": usage.get("api_calls", 0),
        "paid_calls": usage.get("paid_calls", 0),
        "cache_hits": usage.get("cache_hits", 0),
        "retries": usage.get("retries", 0),
        "failures": usage.get("failures", {}),
        "tokens": tokens,
        "cost": None
        if cost is None
        else {
            "estimate": cost,
            "paid_estimate": paid_cost,
            "currency": cfg.pricing.currency,
            "input_per_1m": cfg.pricing.input_per_1m,
            "output_per_1m": cfg.pricing.output_per_1m,
        },
        "elapsed_s": round(elapsed_s, 3),
    }
    out.update(_mode_extras(cfg, counts, usage, consistency_usage))
    return out


def token_summary(usage: dict[str, Any], record_tokens: dict[str, int] | None) -> dict[str, Any]:
    """``tokens`` of the summary: totals (paid + cached), and each part on its own.

    >>> t = token_summary({}, {"prompt": 5, "completion": 2, "cached_prompt": 4,
    ...                        "cached_completion": 1, "cached_samples": 1})
    >>> (t["prompt"], t["completion"], t["total"], t["paid"]["total"], t["cached"]["samples"])
    (9, 3, 12, 7, 1)
    """
    if record_tokens is None:
        rt = {
            "prompt": usage.get("prompt_tokens", 0),
            "completion": usage.get("completion_tokens", 0),
        }
    else:
        rt = record_tokens
    paid_p, paid_c = rt.get("prompt", 0), rt.get("completion", 0)
    cached_p, cached_c = rt.get("cached_prompt", 0), rt.get("cached_completion", 0)
    return {
        "prompt": paid_p + cached_p,
        "completion": paid_c + cached_c,
        "total": paid_p + cached_p + paid_c + cached_c,
        "paid": {"prompt": paid_p, "completion": paid_c, "total": paid_p + paid_c},
        "cached": {
            "prompt": cached_p,
            "completion": cached_c,
            "total": cached_p + cached_c,
            "samples": rt.get("cached_samples", 0),
        },
    }


def _mode_extras(
    cfg: DistillConfig,
    counts: dict[str, Any],
    usage: dict[str, Any],
    consistency_usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """Summary fields that only some modes or generators have."""
    extra: dict[str, Any] = {}
    if not cfg.teacher.is_api:
        extra["sequences"] = usage.get("sequences", 0)
    if cfg.mode == "rejection-sampling":
        extra["sft_records"] = counts["sft_records"]
        extra["rl_records"] = counts["rl_records"]
        extra["dropped_records"] = counts["dropped_records"]
    if cfg.sampling.attempts > 1:
        n = cfg.sampling.attempts
        by = counts["by_difficulty"]
        extra["attempts"] = {
            "max": n,
            "made": counts["attempts_made"],
            "by_difficulty": by,
            "solved": sum(v for k, v in by.items() if int(k) <= n),
            "unsolved": by.get(str(n + 1), 0),
        }
        if cfg.hard is not None:
            extra["attempts"]["hard_records"] = counts["hard_records"]
            extra["attempts"]["hard_min_difficulty"] = cfg.hard.min_difficulty
    if cfg.mode == "cmkd":
        c = counts["cmkd"]
        extra["cmkd"] = {
            **c,
            "selection": "correct > format > confidence"
            if c["without_confidence"] == 0
            else "correct > format (no log-probabilities for some or all records)",
        }
    if consistency_usage is not None:
        extra["consistency_judge"] = {
            k: consistency_usage.get(k, 0) for k in ("api_calls", "paid_calls", "cache_hits")
        } | {
            "tokens": consistency_usage.get("prompt_tokens", 0)
            + consistency_usage.get("completion_tokens", 0)
        }
    return extra
