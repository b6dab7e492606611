"""Converters for image-understanding preference sets (task ``image_understanding``).

Each returns pairs whose prompt is chat messages with image parts holding
:class:`~rmkit.data.sources.base.ImageSource` placeholders; the build stores the images and
puts their references in (see :mod:`rmkit.data.images`). Source layouts: ``docs/build-data.md``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from rmkit.data.sources.base import (
    ConverterSpec,
    ImageSource,
    Pair,
    RowError,
    Skip,
    nonempty,
    require,
    require_str,
)
from rmkit.data.sources.base import (
    answer as candidate_answer,
)
from rmkit.data.sources.image_chat import openai_messages, trl_vision
from rmkit.data.sources.vision import (
    attach_images,
    chat_messages,
    check_pair_options,
    image_sources,
    keep_fields,
    pairs_from_scores,
    rating,
    tie_or_skip,
    understanding_pair,
    user_turn,
)

TASK = "image_understanding"
VLF_ASPECTS = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")


def _image(row: dict[str, Any], *keys: str) -> ImageSource:
    """The first present image column among ``keys`` as a placeholder."""
    for k in keys:
        if row.get(k) not in (None, "", {}):
            return ImageSource(row[k], k)
    raise RowError(
        keys[0],
        "an image (bytes, {bytes, path} struct, path or base64)"
        + (f"; or '{keys[1]}'" if len(keys) > 1 else ""),
    )


def rlaif_v(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    question = require_str(row, "question")
    image = _image(row, "image", "image_path")
    c = candidate_answer(require_str(row, "chosen", allow_empty=True), "chosen")
    r = candidate_answer(require_str(row, "rejected", allow_empty=True), "rejected")
    meta = keep_fields(row, ("ds_name", "origin_dataset", "idx"))
    key = (
        f"{row['ds_name']}/{row['idx']}"
        if "ds_name" in meta and "idx" in meta
        else (str(row["idx"]) if "idx" in meta else None)
    )
    return [
        understanding_pair(user_turn(question, [image], "question"), [c, r], 0, key=key, meta=meta)
    ]


def vlfeedback(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    """Pairs from 4 rated completions: mean rating over ``aspects``, ``pairs`` rule, ``min_gap``."""
    prompt_text = require_str(row, "prompt")
    image = _image(row, "image", "img_path")
    comps = require(row, "completions")
    if not isinstance(comps, list) or len(comps) < 2:
        raise RowError("completions", "a list of at least 2 completions")
    aspects = list(opts.get("aspects") or VLF_ASPECTS)
    scores: list[float | None] = []
    for i, comp in enumerate(comps):
        if not isinstance(comp, dict) or not isinstance(comp.get("response"), str):
            raise RowError(f"completions[{i}]", "an object with a 'response' string")
        ann = comp.get("annotations")
        if not isinstance(ann, dict):
            raise RowError(f"completions[{i}].annotations", "an object of aspect ratings")
        vals = [
            rating((ann.get(a) or {}).get("Rating") if isinstance(ann.get(a), dict) else ann.get(a))
            for a in aspects
        ]
        ok = comp["response"].strip() and all(v is not None for v in vals)
        scores.append(sum(vals) / len(vals) if ok else None)  # type: ignore[arg-type]
    if sum(s is not None for s in scores) < 2:
        raise Skip("fewer than 2 completions with all ratings")
    found = pairs_from_scores(scores, opts["pairs"], float(opts["min_gap"]))
    if not found:
        raise Skip(f"no two completions differ by min_gap={opts['min_gap']}")
    prompt = user_turn(prompt_text, [image], "prompt")
    rid = str(row["id"]) if row.get("id") is not None else None
    out = []
    for b, w in found:
        meta = {
            "scores": [scores[b], scores[w]],
            "models": [comps[b].get("model"), comps[w].get("model")],
            "completion_index": [b, w],
        }
        out.append(
            understanding_pair(
                prompt,
                [comps[b]["response"], comps[w]["response"]],
                0,
                key=f"{rid}:{b}>{w}" if rid else None,
                meta=meta,
            )
        )
    return out


def _conv_pair(row: dict[str, Any], ckey: str, rkey: str) -> tuple[list[dict], str, str]:
    chosen = chat_messages(require(row, ckey), ckey, allow_image_parts=False)
    rejected = chat_messages(require(row, rkey), rkey, allow_image_parts=False)
    for key, msgs in ((ckey, chosen), (rkey, rejected)):
        if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            raise RowError(key, "a conversation ending with the assistant's answer")
    if chosen[:-1] != rejected[:-1]:
        raise RowError(rkey, f"the same turns as '{ckey}' before the answer")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def povid(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    context, c, r = _conv_pair(row, "conversations", "rejected_conversations")
    prompt = attach_images(context, [_image(row, "image")], "conversations", strict=False)
    key = str(row["id"]) if row.get("id") is not None else None
    return [
        understanding_pair(
            prompt,
            [candidate_answer(c, "conversations"), candidate_answer(r, "rejected_conversations")],
            0,
            key=key,
        )
    ]


_CRITIC_LAYOUTS = (
    re.compile(
        r"Question:\s*\[(?P<q>.*?)\]\s*The first response:\s*\[(?P<a>.*?)\]\s*The second response:\s*\[(?P<b>.*)\]",
        re.S,
    ),
    re.compile(
        r"\[Question\]\s*(?P<q>.*?)\s*\[The Start of Assistant (?:1|A)'s Answer\]\s*(?P<a>.*?)\s*\[The End of Assistant (?:1|A)'s Answer\]"
        r"\s*\[The Start of Assistant (?:2|B)'s Answer\]\s*(?P<b>.*?)\s*\[The End of Assistant (?:2|B)'s Answer\]",
        re.S,
    ),
)
_VERDICT = re.compile(
    r"(?P<win>\b(?:answer|response|assistant)\s*(?P<n>1|2|a|b|one|two)\s+is\s+(?:better|superior|preferred|more\s+\w+))"
    r"|(?P<ord>\bthe\s+(?P<o>first|second)\s+(?:response|answer)\s+is\s+(?:better|superior|preferred))"
    r"|(?P<br>\[\[(?P<k>A|B|1|2)\]\])"
    r"|(?P<tie>\b(?:equally\s+(?:good|bad|helpful|accurate)|two\s+(?:responses|answers)\s+are\s+equal\w*|it'?s\s+a\s+tie|\[\[C\]\]))",
    re.I,
)


def critic_verdict(judgement: str) -> int | str | None:
    """0/1 for the better of two responses, "tie", or None; the last statement in the text wins."""
    last = None
    for m in _VERDICT.finditer(judgement):
        last = m
    if last is None:
        return None
    if last.group("tie"):
        return "tie"
    token = (last.group("n") or last.group("o") or last.group("k") or "").lower()
    return 0 if token in ("1", "a", "one", "first") else 1


def llava_critic(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    """The pairwise config: the two responses are parsed out of the critic prompt."""
    conv = chat_messages(require(row, "conversations"), "conversations", allow_image_parts=False)
    if len(conv) < 2 or conv[0]["role"] != "user" or conv[-1]["role"] != "assistant":
        raise RowError("conversations", "a human critic prompt followed by the gpt judgement")
    text = conv[0]["content"].replace("<image>", "").strip()
    m = next((m for lay in _CRITIC_LAYOUTS if (m := lay.search(text))), None)
    if m is None:
        raise RowError(
            "conversations[0].value",
            "a pairwise critic prompt ('Question: [...] The first response: [...] The second response: [...]')",
        )
    b = re.split(r"\]\s*(?:\n\s*)?ASSISTANT:", m.group("b"))[0].rstrip().removesuffix("]")
    q, a = m.group("q").strip(), m.group("a").strip()
    verdict = critic_verdict(conv[-1]["content"])
    if verdict is None:
        raise RowError(
            "conversations[1].value",
            "a judgement naming the better response (e.g. 'Answer 1 is better')",
        )
    meta = keep_fields(row, ("source",))
    if opts.get("keep_critique"):
        meta["critique"] = conv[-1]["content"]
    prompt = user_turn(
        nonempty(q, "conversations[0].value"), [_image(row, "image")], "conversations"
    )
    cands = [
        candidate_answer(a, "conversations[0].value"),
        candidate_answer(b.strip(), "conversations[0].value"),
    ]
    key = str(row["id"]) if row.get("id") is not None else None
    if verdict == "tie":
        tie_or_skip("tie", opts.get("drop_ties", False), "the judgement calls the responses equal")
        return [understanding_pair(prompt, cands, None, label_kind="tie", key=key, meta=meta)]
    return [understanding_pair(prompt, cands, verdict, key=key, meta=meta)]


_R1_SECTIONS = re.compile(
    r"\[Question\]:\s*(?P<q>.*?)\s*#*\s*\[Response 1\]:\s*(?P<a>.*?)\s*#*\s*\[Response 2\]:\s*(?P<b>.*?)\s*(?:#+\s*\**\s*Output Format|$)",
    re.S,
)
_R1_ANSWER = re.compile(r"^\s*(?:<answer>\s*)?([12])\s*(?:</answer>)?\s*$")


def r1_reward(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    raw = require(row, "message")
    try:
        msgs = orjson.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except orjson.JSONDecodeError as e:
        raise RowError("message", f"a JSON string of chat messages ({e})") from None
    msgs = chat_messages(msgs, "message")
    user = next((m for m in msgs if m["role"] == "user"), None)
    if user is None:
        raise RowError("message", "a user message holding the judge prompt")
    content = (
        user["content"]
        if isinstance(user["content"], list)
        else [{"type": "text", "text": user["content"]}]
    )
    text = "\n".join(p["text"] for p in content if p["type"] == "text")
    m = _R1_SECTIONS.search(text)
    if m is None:
        raise RowError(
            "message", "a judge prompt with [Question]:, [Response 1]: and [Response 2]: sections"
        )
    answer = require(row, "answer")
    ans = answer[0] if isinstance(answer, list) and answer else answer
    am = _R1_ANSWER.match(ans) if isinstance(ans, str) else None
    if am is None:
        raise RowError("answer", f"'<answer>1</answer>' or '<answer>2</answer>' (got {answer!r})")
    parts = [p for p in content if p["type"] == "image"]
    if row.get("image") not in (None, ""):
        if len(parts) > 1:
            raise RowError(
                "image", f"one image per message image part ({len(parts)} parts, one 'image' value)"
            )
        images = [ImageSource(row["image"], "image")]
    else:
        images = [_strip_dirs(p["image"], opts) for p in parts if p["image"] is not None]
        if not images:
            raise RowError("image", "an image (the 'image' column or an image part in 'message')")
    question = (
        row["question"]
        if isinstance(row.get("question"), str) and row["question"].strip()
        else m.group("q").strip()
    )
    prompt = user_turn(nonempty(question, "question"), images, "message")
    cands = [
        candidate_answer(m.group("a").strip(), "message"),
        candidate_answer(m.group("b").strip(), "message"),
    ]
    return [understanding_pair(prompt, cands, int(am.group(1)) - 1)]


def _strip_dirs(src: ImageSource, opts: dict[str, Any]) -> ImageSource:
    if (
        opts.get("strip_image_dirs")
        and isinstance(src.value, str)
        and not src.value.startswith("data:")
    ):
        return ImageSource(src.value.replace("\\", "/").rsplit("/", 1)[-1], src.field)
    return src


def sharegpt(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    """LLaMA-Factory preference layout; the ``<image>`` markers must match ``images`` exactly."""
    cols = {
        "conversations": "conversations",
        "chosen": "chosen",
        "rejected": "rejected",
        "images": "images",
        "system": "system",
        **(opts.get("columns") or {}),
    }
    conv = chat_messages(
        require(row, cols["conversations"]), cols["conversations"], allow_image_parts=False
    )
    if conv[-1]["role"] != "user":
        raise RowError(cols["conversations"], "a conversation ending with a human turn")
    if isinstance(row.get(cols["system"]), str) and row[cols["system"]].strip():
        conv = [{"role": "system", "content": row[cols["system"]]}, *conv]
    answers = []
    for k in ("chosen", "rejected"):
        v = require(row, cols[k])
        msg = (
            chat_messages([v] if isinstance(v, dict) else v, cols[k], allow_image_parts=False)[-1]
            if not isinstance(v, str)
            else {"content": v}
        )
        answers.append(candidate_answer(msg["content"], cols[k]))
    prompt = attach_images(
        conv, image_sources(row.get(cols["images"]), cols["images"]), cols["images"], strict=True
    )
    return [
        understanding_pair(
            prompt, answers, 0, key=str(row["id"]) if row.get("id") is not None else None
        )
    ]


def _vlf_check(opts: dict[str, Any]) -> str | None:
    if (
        not isinstance(opts.get("aspects"), list)
        or not opts["aspects"]
        or not all(isinstance(a, str) for a in opts["aspects"])
    ):
        return "option aspects must be a non-empty list of aspect names"
    return check_pair_options(opts)


def _spec(
    name: str, fn: Any, desc: str, options: dict[str, Any] | None = None, check: Any = None
) -> ConverterSpec:
    return ConverterSpec(name, fn, desc, options or {}, task=TASK, check=check)


IMAGE_UNDERSTANDING_CONVERTERS = {
    "rlaif-v": _spec("rlaif-v", rlaif_v, "RLAIF-V (question, chosen, rejected, image bytes)"),
    "vlfeedback": _spec(
        "vlfeedback",
        vlfeedback,
        "VLFeedback (4 rated completions -> pairs by mean rating and min_gap)",
        {"aspects": list(VLF_ASPECTS), "min_gap": 1.0, "pairs": "best-worst"},
        _vlf_check,
    ),
    "povid": _spec(
        "povid", povid, "POVID (LLaVA conversations / rejected_conversations, image path)"
    ),
    "llava-critic": _spec(
        "llava-critic",
        llava_critic,
        "LLaVA-Critic-113k pairwise (critic prompt + judgement, image bytes)",
        {"drop_ties": False, "keep_critique": True},
    ),
    "r1-reward": _spec(
        "r1-reward",
        r1_reward,
        "R1-Reward RL (message JSON string, answer <answer>K</answer>, image)",
        {"strip_image_dirs": False},
    ),
    "sharegpt": _spec(
        "sharegpt", sharegpt, "ShareGPT / LLaMA-Factory preference with images", {"columns": {}}
    ),
    "openai-messages": _spec(
        "openai-messages",
        openai_messages,
        "OpenAI chat messages with image_url (data URL) parts",
        {"columns": {}},
    ),
    "trl-vision": _spec(
        "trl-vision",
        trl_vision,
        "TRL vision preference (prompt/chosen/rejected messages + images)",
        {"columns": {}},
    ),
}
