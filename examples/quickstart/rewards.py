"""A rule-based consistency reward for the quickstart judge (``rewards.py:restates_choice``).

The quickstart template shows each reply as ``Response K: <text> (K)`` and asks the judge to
repeat the correct reply inside ``<think></think>`` before giving its label. This reward checks
that the reasoning supports the verdict without calling another model: 1.0 when the think
block is exactly one of the shown replies with its own label and the answer is that label,
else 0.0. With the accuracy reward beside it, a judge that copies the wrong reply and then
answers with the right label earns nothing for the mismatch, so the reward for a correct
verdict has to come from choosing the right reply to repeat.
"""

from __future__ import annotations

import re

_RESPONSE = re.compile(r"^Response (\d+): (.*) \((\d+)\)$", re.MULTILINE)
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def shown_replies(messages: list[dict] | None) -> dict[str, str]:
    """``{label: reply text}`` as the template showed them in the user message."""
    user = next((m for m in reversed(messages or []) if m.get("role") == "user"), None)
    text = user.get("content") if user else ""
    if isinstance(text, list):  # content parts
        text = "\n".join(p.get("text", "") for p in text if isinstance(p, dict))
    return {k: body for k, body, k2 in _RESPONSE.findall(text or "") if k == k2}


def restates_choice(completion: str, messages: list[dict] | None = None) -> float:
    """1.0 when ``<think>`` repeats a shown reply with its label and ``<answer>`` gives it."""
    think, answer = _THINK.findall(completion), _ANSWER.findall(completion)
    if len(think) != 1 or len(answer) != 1:
        return 0.0
    label = answer[0].strip()
    replies = shown_replies(messages)
    return 1.0 if label in replies and think[0].strip() == f"{replies[label]} ({label})" else 0.0
