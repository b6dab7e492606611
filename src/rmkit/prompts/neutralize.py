"""Neutralising control-token text in user-supplied strings (SECURITY-REVIEW M7).

Text that comes from records, candidates, captions or requests must never turn into a special
token of the judge's tokenizer: a candidate holding ``<|im_end|><|im_start|>assistant ...`` would
otherwise close the user turn and forge an assistant turn with a verdict. Every occurrence of a
special-token string in such text is broken *visibly* by inserting a backslash after its first
character::

    <|im_end|>          ->  <\\|im_end|>
    <end_of_utterance>  ->  <\\end_of_utterance>
    </s>                ->  <\\/s>

The escaped form is plain text to every tokenizer (no tokenizer drops a backslash), a reader still
recognises what was written, and escaping is idempotent (escaped text holds no token string, so a
second pass changes nothing). Matching ignores case. A one-character special token (rare) is
replaced by its ``\\uXXXX`` spelling.

Two places call :func:`neutralize`:

- :mod:`rmkit.models.chat` (``normalize_messages``), with the exact special tokens of the
  loaded tokenizer, for every message before the chat template is applied: every local model
  path (eval, distill, train, serve chat and score) tokenises through it;
- :mod:`rmkit.prompts.render`, with :data:`COMMON_CONTROL_TOKENS` and any ``<|...|>`` marker,
  for record text put into a judge prompt, so prompts sent to an API judge (whose tokenizer is
  not known here) are neutralised too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

# Chat-control strings of common model families (ChatML/Qwen, Llama 2/3, Gemma, Phi, Idefics,
# LLaVA, Mistral): escaped in rendered judge prompts whatever model reads them.
COMMON_CONTROL_TOKENS = (
    "<s>",
    "</s>",
    "<unk>",
    "<pad>",
    "<image>",
    "<video>",
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<bos>",
    "<eos>",
    "[INST]",
    "[/INST]",
)
# Any ``<|name|>`` marker (ChatML, Llama 3 ``<|eot_id|>``, Qwen-VL ``<|image_pad|>``, Phi, ...).
_PIPE_MARKER = r"<\|[^<>|\s]{1,64}\|>"
_MAX_PASSES = 8


def _escape_one(token: str) -> str:
    if len(token) < 2:
        return "".join(f"\\u{ord(c):04x}" for c in token)
    return token[0] + "\\" + token[1:]


@functools.lru_cache(maxsize=64)
def _pattern(tokens: tuple[str, ...], pipe_markers: bool) -> re.Pattern[str] | None:
    alts = [re.escape(t) for t in sorted(set(tokens), key=len, reverse=True) if t]
    if pipe_markers:
        alts.append(_PIPE_MARKER)
    if not alts:
        return None
    return re.compile("|".join(alts), re.IGNORECASE)


def neutralize(text: str, tokens: Iterable[str] = (), *, pipe_markers: bool = False) -> str:
    """``text`` with every occurrence of a string of ``tokens`` (and, with ``pipe_markers``, of
    any ``<|...|>`` marker) broken visibly so that no tokenizer reads it as a control token."""
    pattern = _pattern(tuple(tokens), pipe_markers)
    if pattern is None or not text:
        return text
    for _ in range(_MAX_PASSES):
        if not pattern.search(text):
            return text
        text = pattern.sub(lambda m: _escape_one(m.group(0)), text)
    # escaping inserts characters only inside matches; a token built across an escape would need
    # a token containing a backslash: refuse rather than pass control text through
    if pattern.search(text):
        from rmkit.errors import RmkitError

        raise RmkitError("text holds control-token strings that cannot be neutralised")
    return text


def neutralize_common(text: str) -> str:
    """Record text for a judge prompt: common control tokens and ``<|...|>`` markers escaped."""
    return neutralize(text, COMMON_CONTROL_TOKENS, pipe_markers=True)


def special_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """Every special-token string of ``tokenizer``: ``all_special_tokens`` and the added tokens
    marked special (e.g. ``<|im_start|>``, which ``all_special_tokens`` may leave out)."""
    found: set[str] = set()
    for tok in getattr(tokenizer, "all_special_tokens", None) or ():
        if isinstance(tok, str):
            found.add(tok)
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for added in decoder.values():
        content = getattr(added, "content", None)
        if isinstance(content, str) and getattr(added, "special", False):
            found.add(content)
    return tuple(sorted(t for t in found if t))
