"""Converters for text preference sets (schemas: docs/records.md#sources)."""

from __future__ import annotations

import re
from typing import Any

from rmkit.data.records import cluster_problem
from rmkit.data.sources.base import (
    ConverterSpec,
    Pair,
    RowError,
    Skip,
    answer,
    missing_or_null,
    normalize_messages,
    prompt_from_messages,
    require,
    require_str,
    split_conversation,
)

HH_SUBSETS = (
    "harmless-base",
    "helpful-base",
    "helpful-online",
    "helpful-rejection-sampled",
    "red-team-attempts",
)
_H, _A = "\n\nHuman:", "\n\nAssistant:"


_TURN = re.compile(r"(\n\nHuman:|\n\nAssistant:)")


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """Split ``"\\n\\nHuman: …\\n\\nAssistant: …"`` into chat messages."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first '\\n\\nHuman:' turn")
    return [
        {"role": "user" if parts[i] == _H else "assistant", "content": parts[i + 1].strip()}
        for i in range(1, len(parts) - 1, 2)
    ]


def _hh_split(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Return (prompt transcript ending with 'Assistant:', chosen reply, rejected reply)."""
    cut = chosen.rfind(_A)
    if cut != -1 and rejected.startswith(chosen[: cut + len(_A)]):
        end = cut + len(_A)
    else:  # the transcripts differ earlier: back off to the last shared assistant marker
        i = 0
        m = min(len(chosen), len(rejected))
        while i < m and chosen[i] == rejected[i]:
            i += 1
        end = chosen.rfind(_A, 0, i)
        if end == -1:
            raise RowError(
                "chosen",
                "a transcript sharing its prompt with 'rejected' up to an '\\n\\nAssistant:' turn",
            )
        end += len(_A)
    return chosen[:end], chosen[end:].strip(), rejected[end:].strip()


def hh_rlhf(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    chosen = require_str(row, "chosen")
    rejected = require_str(row, "rejected")
    prefix, c, r = _hh_split(chosen, rejected)
    try:
        context = parse_hh_transcript(prefix[: -len(_A)])
    except ValueError as e:
        raise RowError("chosen", f"an HH-RLHF transcript ({e})") from None
    if not context or context[-1]["role"] != "user":
        raise RowError("chosen", "a transcript whose last turn before the answer is 'Human:'")
    return [
        Pair(
            prompt=prompt_from_messages(context),
            candidates=[answer(c, "chosen"), answer(r, "rejected")],
            label=0,
            subset=opts.get("subset"),
        )
    ]


def _reply(row: dict[str, Any], key: str) -> tuple[list[dict[str, Any]], str]:
    v = require(row, key)
    if isinstance(v, str):
        return [], v
    msgs = normalize_messages(v, key)
    return split_conversation(msgs, key)


def ultrafeedback(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    prompt = require_str(row, "prompt")
    ctx_c, c = _reply(row, "chosen")
    ctx_r, r = _reply(row, "rejected")
    if ctx_c and ctx_r and ctx_c != ctx_r:
        raise RowError("rejected", "the same conversation context as 'chosen'")
    context = ctx_c or [{"role": "user", "content": prompt}]
    meta = {k: row[k] for k in ("score_chosen", "score_rejected") if row.get(k) is not None}
    if (
        opts.get("drop_ties")
        and meta.get("score_chosen") is not None
        and meta.get("score_chosen") == meta.get("score_rejected")
    ):
        raise Skip("tie: score_chosen == score_rejected")
    return [
        Pair(
            prompt=prompt_from_messages(context),
            candidates=[answer(c, "chosen"), answer(r, "rejected")],
            label=0,
            key=str(row["prompt_id"]) if row.get("prompt_id") else None,
            meta=meta,
        )
    ]


def skywork(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    ctx_c, c = split_conversation(normalize_messages(require(row, "chosen"), "chosen"), "chosen")
    ctx_r, r = split_conversation(
        normalize_messages(require(row, "rejected"), "rejected"), "rejected"
    )
    if ctx_c != ctx_r:
        raise RowError("rejected", "the same conversation context as 'chosen'")
    meta = {"origin": row["source"]} if isinstance(row.get("source"), str) else {}
    return [
        Pair(
            prompt=prompt_from_messages(ctx_c),
            candidates=[answer(c, "chosen"), answer(r, "rejected")],
            label=0,
            meta=meta,
        )
    ]


def helpsteer3(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    context = normalize_messages(require(row, "context"), "context")
    if context[-1]["role"] != "user":
        raise RowError("context", "a conversation ending with a user turn")
    r1 = answer(require_str(row, "response1", allow_empty=True), "response1")
    r2 = answer(require_str(row, "response2", allow_empty=True), "response2")
    pref = require(row, "overall_preference")
    if isinstance(pref, bool) or not isinstance(pref, (int, float)) or not -3 <= pref <= 3:
        raise RowError("overall_preference", f"a number in -3..3, got {pref!r}")
    min_strength = int(opts.get("min_strength", 1))
    meta: dict[str, Any] = {"overall_preference": pref}
    for k in ("domain", "language"):
        if isinstance(row.get(k), str):
            meta[k] = row[k]
    if opts.get("keep_rationales", True) and isinstance(row.get("individual_preference"), list):
        meta["individual_preference"] = row["individual_preference"]
    if pref == 0:
        if not opts.get("keep_ties"):
            raise Skip("tie: overall_preference == 0")
        return [
            Pair(
                prompt=prompt_from_messages(context),
                candidates=[r1, r2],
                label=None,
                label_kind="tie",
                meta=meta,
                subset=meta.get("domain"),
            )
        ]
    if abs(pref) < min_strength:
        raise Skip(f"weak preference: |overall_preference| < {min_strength}")
    # HelpSteer3: negative values mean response1 is better, positive mean response2 is better.
    label = 0 if pref < 0 else 1
    return [
        Pair(
            prompt=prompt_from_messages(context),
            candidates=[r1, r2],
            label=label,
            meta=meta,
            subset=meta.get("domain"),
        )
    ]


def _text_or_reply(row: dict[str, Any], key: str) -> tuple[list[dict[str, Any]], str]:
    v = require(row, key)
    if isinstance(v, str):
        return [], v
    if isinstance(v, list) and v and isinstance(v[0], dict):
        msgs = normalize_messages(v, key)
        if len(msgs) == 1 and msgs[0]["role"] == "assistant":
            return [], msgs[0]["content"]
        return split_conversation(msgs, key)
    raise RowError(key, f"a string or chat messages, got {type(v).__name__}")


def rewardbench(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    """RewardBench (1 chosen vs 1 rejected) and RewardBench 2 (lists: 1+ chosen vs 3 rejected)."""
    prompt_v = require(row, "prompt")
    prompt: str | list[dict[str, Any]]
    if isinstance(prompt_v, str):
        if not prompt_v.strip():
            raise RowError("prompt", "a non-empty string")
        prompt = prompt_v
    else:
        prompt = prompt_from_messages(normalize_messages(prompt_v, "prompt"))
    meta = {
        k: row[k]
        for k in ("subset", "chosen_model", "rejected_model", "num_correct")
        if row.get(k) is not None
    }
    key = str(row["id"]) if row.get("id") is not None else None
    chosen, rejected = require(row, "chosen"), require(row, "rejected")
    if isinstance(chosen, list) and chosen and all(isinstance(x, str) for x in chosen):
        if (
            not isinstance(rejected, list)
            or not rejected
            or not all(isinstance(x, str) for x in rejected)
        ):
            raise RowError("rejected", "a non-empty list of strings (RewardBench 2 layout)")
        rej = [answer(x, f"rejected[{i}]") for i, x in enumerate(rejected)]
        out = []
        for i, c in enumerate(chosen):
            out.append(
                Pair(
                    prompt=prompt,
                    candidates=[answer(c, f"chosen[{i}]"), *rej],
                    label=0,
                    key=None if key is None else (key if len(chosen) == 1 else f"{key}.{i}"),
                    meta=dict(meta),
                    subset=meta.get("subset"),
                )
            )
        return out
    _, c = _text_or_reply(row, "chosen")
    _, r = _text_or_reply(row, "rejected")
    return [
        Pair(
            prompt=prompt,
            candidates=[answer(c, "chosen"), answer(r, "rejected")],
            label=0,
            key=key,
            meta=meta,
            subset=meta.get("subset"),
        )
    ]


def pairs(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    """Generic prompt/chosen/rejected rows; ``columns`` maps our names to the source's. An
    optional ``cluster`` column (a string or number) becomes the record's ``cluster``."""
    cols = {
        "prompt": "prompt",
        "chosen": "chosen",
        "rejected": "rejected",
        "id": "id",
        "cluster": "cluster",
        **(opts.get("columns") or {}),
    }
    mapped = {k: row.get(v) for k, v in cols.items()}
    for k in ("chosen", "rejected"):
        if mapped[k] is None:
            raise missing_or_null(row, cols[k])
    ctx_c, c = _text_or_reply({"chosen": mapped["chosen"]}, "chosen")
    ctx_r, r = _text_or_reply({"rejected": mapped["rejected"]}, "rejected")
    pv = mapped["prompt"]
    if pv is None:
        if not ctx_c:
            raise RowError(
                cols["prompt"], "a value (or chosen/rejected given as whole conversations)"
            )
        if ctx_c != ctx_r:
            raise RowError(cols["rejected"], "the same conversation context as the chosen column")
        prompt = prompt_from_messages(ctx_c)
    elif isinstance(pv, str):
        if not pv.strip():
            raise RowError(cols["prompt"], "a non-empty string")
        prompt = pv
    else:
        prompt = prompt_from_messages(normalize_messages(pv, cols["prompt"]))
    key = str(mapped["id"]) if mapped.get("id") is not None else None
    problem = cluster_problem(mapped["cluster"])
    if problem:
        raise RowError(cols["cluster"], problem)
    extra = {k: row[k] for k in opts.get("keep_columns") or [] if k in row}
    return [
        Pair(
            prompt=prompt,
            candidates=[answer(c, cols["chosen"]), answer(r, cols["rejected"])],
            label=0,
            key=key,
            meta=extra,
            cluster=mapped["cluster"],
        )
    ]


TEXT_CONVERTERS = {
    "hh-rlhf": ConverterSpec(
        "hh-rlhf", hh_rlhf, "Anthropic HH-RLHF transcripts (chosen/rejected)", {"subset": None}
    ),
    "ultrafeedback": ConverterSpec(
        "ultrafeedback",
        ultrafeedback,
        "UltraFeedback binarized (prompt, chosen/rejected messages, scores)",
        {"drop_ties": False},
    ),
    "skywork": ConverterSpec(
        "skywork", skywork, "Skywork-Reward-Preference (chosen/rejected conversations)"
    ),
    "helpsteer3": ConverterSpec(
        "helpsteer3",
        helpsteer3,
        "HelpSteer3 preference (context, response1/2, overall_preference)",
        {"keep_ties": False, "min_strength": 1, "keep_rationales": True},
    ),
    "rewardbench": ConverterSpec(
        "rewardbench",
        rewardbench,
        "RewardBench / RewardBench 2 style (prompt, chosen, rejected; lists for v2)",
    ),
    "pairs": ConverterSpec(
        "pairs",
        pairs,
        "generic prompt/chosen/rejected with a column mapping",
        {"columns": {}, "keep_columns": []},
    ),
}
