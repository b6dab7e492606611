"""Parse a judge's output into a verdict, exactly as its template defines it.

Two independent questions are answered for every output:

* **Which candidate?** The ``<answer>`` content (or the ``[[X]]`` verdict of bracket templates) is
  mapped to a 0-based *shown* position through the template's answer vocabulary. Strict mode
  wants the vocabulary string exactly (surrounding whitespace aside) and exactly one answer;
  lenient mode also normalises inner whitespace, letter case and trailing punctuation, accepts
  repeated answers that agree, and reads an unclosed final ``<answer>`` to the end of the text.
* **Is the format right?** Strict (the R1-Reward rule): the whole output is the template's
  blocks in order (``<type>``, ``<caption>``, ``<think>``, ``<answer>`` as required), one of
  each, non-empty, with nothing but whitespace around and between them. Lenient: every required
  block present once, closed, non-empty and in order; other text anywhere is allowed.

The two are reported separately (``choice`` and ``format_ok``): an accuracy reward and a format
reward each read their own part.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from itertools import pairwise

from rmkit.errors import RmkitError
from rmkit.prompts.templates import JudgeTemplate, format_answer, get_template

KNOWN_TAGS = ("type", "caption", "think", "answer")
_TAG_RE = re.compile(r"<(/?)(type|caption|think|answer)>")
_TAG_RE_I = re.compile(r"<(/?)(type|caption|think|answer)>", re.IGNORECASE)
_BRACKET_RE = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
_NUMBER_RE = re.compile(r"[-+]?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Verdict:
    """A parsed judge output.

    ``choice`` is the 0-based position *as shown* of the chosen candidate (None when no valid
    answer); ``outcome`` is "preferred" when a candidate was chosen, "tie"/"both_bad" for the
    non-positional verdicts of 4-way templates; ``score`` is set by pointwise templates.
    ``reason`` says what was wrong (answer problem first, then format problem), None if nothing.
    """

    choice: int | None
    format_ok: bool
    answer: str | None
    think: str | None = None
    type: str | None = None
    caption: str | None = None
    reason: str | None = None
    outcome: str | None = None
    score: float | None = None

    @property
    def parsed(self) -> bool:
        """True when the output gave a usable verdict (a choice, a tie outcome or a score)."""
        return self.outcome is not None or self.score is not None


def normalize_answer(text: str) -> str:
    """Lenient comparison key: inner whitespace collapsed, case folded, trailing punctuation cut."""
    return re.sub(r"\s+", " ", text).strip().casefold().rstrip(".!?,;:").rstrip()


def _tag_tokens(text: str, strict: bool) -> list[tuple[int, int, bool, str]]:
    rx = _TAG_RE if strict else _TAG_RE_I
    return [(m.start(), m.end(), m.group(1) == "/", m.group(2).lower()) for m in rx.finditer(text)]


def _block_span(tokens, name: str) -> tuple[tuple[int, int, int, int] | None, str | None]:
    """(open_start, open_end, close_start, close_end) of the single ``name`` block, or a problem."""
    opens = [t for t in tokens if t[3] == name and not t[2]]
    closes = [t for t in tokens if t[3] == name and t[2]]
    if not opens and not closes:
        return None, f"missing <{name}> block"
    if not opens:
        return None, f"</{name}> without <{name}>"
    if len(opens) > 1 and closes and opens[1][0] < closes[0][0]:
        return None, f"nested <{name}> tags"
    if len(opens) > 1 or len(closes) > 1:
        return None, f"{max(len(opens), len(closes))} <{name}> blocks (expected one)"
    if not closes:
        return None, f"unclosed <{name}>"
    (o_start, o_end, _, _), (c_start, c_end, _, _) = opens[0], closes[0]
    if c_start < o_start:
        return None, f"</{name}> before <{name}>"
    return (o_start, o_end, c_start, c_end), None


def check_format(text: str, blocks: tuple[str, ...], strict: bool) -> str | None:
    """None when ``text`` has the tagged ``blocks`` in the required form, else the problem."""
    tokens = _tag_tokens(text, strict)
    spans = []
    for name in blocks:
        span, problem = _block_span(tokens, name)
        if problem:
            return problem
        spans.append(span)
    pairs = list(zip(blocks, spans, strict=True))
    for (a, sa), (b, sb) in pairwise(pairs):
        if sa[3] > sb[0]:
            return f"<{b}> must come after </{a}>"
    for name, span in pairs:
        if not text[span[1] : span[2]].strip():
            return f"empty <{name}>"
    if not strict:
        return None
    extra = sorted({t[3] for t in tokens if t[3] not in blocks})
    if extra:
        return f"unexpected <{extra[0]}> tag"
    if text[: spans[0][0]].strip():
        return f"text before <{blocks[0]}>"
    if text[spans[-1][3] :].strip():
        return f"text after </{blocks[-1]}>"
    for (a, sa), (b, sb) in pairwise(pairs):
        if text[sa[3] : sb[0]].strip():
            return f"text between </{a}> and <{b}>"
    return None


def _first_block(text: str, name: str, strict: bool) -> str | None:
    flags = re.DOTALL if strict else re.DOTALL | re.IGNORECASE
    m = re.search(rf"<{name}>(.*?)</{name}>", text, flags)
    return m.group(1).strip() if m else None


def _map_answer(
    content: str, tpl: JudgeTemplate, n: int, strict: bool
) -> tuple[int | None, str | None, str | None]:
    """Map answer text to (choice, outcome, problem) through the template's vocabulary."""
    key = content.strip() if strict else normalize_answer(content)
    if not key:
        return None, None, "empty answer"

    def same(word: str) -> bool:
        return key == (word if strict else normalize_answer(word))

    for i, word in enumerate(tpl.answers(n)):
        if same(word):
            return i, "preferred", None
    for word, outcome in tpl.spec.outcomes.items():
        if same(word):
            return None, outcome, None
    pattern = tpl.spec.answers
    if isinstance(pattern, str):
        for i in range(n, max(n + 1, 100)):
            if same(format_answer(pattern, i)):
                return None, None, f"answer {content.strip()!r} is out of range ({n} candidates)"
    allowed = tpl.answers(n) + list(tpl.spec.outcomes)
    return None, None, f"answer {content.strip()!r} is not one of {allowed}"


def _map_score(content: str, tpl: JudgeTemplate, strict: bool) -> tuple[float | None, str | None]:
    text = content.strip()
    if strict:
        num = text if _NUMBER_RE.fullmatch(text) else None
    else:
        m = _NUMBER_RE.search(text)
        num = m.group(0) if m else None
    if num is None:
        return None, f"answer {text!r} is not a number"
    lo, hi = tpl.spec.score_range
    value = float(num)
    if not lo <= value <= hi:
        return None, f"score {value:g} is outside [{lo:g}, {hi:g}]"
    return value, None


def _tag_answer(text: str, tpl: JudgeTemplate, n: int, strict: bool):
    """(choice, outcome, score, answer text, problem) for templates with an <answer> block."""
    flags = re.DOTALL if strict else re.DOTALL | re.IGNORECASE
    contents = re.findall(r"<answer>(.*?)</answer>", text, flags)
    if not contents and not strict:
        opens = list(re.finditer(r"<answer>", text, re.IGNORECASE))
        if opens:
            contents = [text[opens[-1].end() :]]
    if not contents:
        return None, None, None, None, "no complete <answer> block"
    if strict and len(contents) > 1:
        return None, None, None, None, f"{len(contents)} <answer> blocks (expected one)"
    if tpl.is_pointwise:
        results = [_map_score(c, tpl, strict) for c in contents]
        values = {v for v, _ in results}
        if len(values) > 1:
            return None, None, None, None, "conflicting <answer> blocks"
        score, problem = results[0]
        return None, None, score, contents[-1].strip(), problem
    mapped = [_map_answer(c, tpl, n, strict) for c in contents]
    if len({(c, o) for c, o, _ in mapped}) > 1:
        return None, None, None, None, "conflicting <answer> blocks"
    choice, outcome, problem = mapped[0]
    return choice, outcome, None, contents[-1].strip(), problem


def _parse_bracket(text: str, tpl: JudgeTemplate, n: int, strict: bool) -> Verdict:
    found = list(_BRACKET_RE.finditer(text))
    if not found:
        return Verdict(None, False, None, reason="no [[...]] verdict")
    if strict and len(found) > 1:
        return Verdict(None, False, None, reason=f"{len(found)} [[...]] verdicts (expected one)")
    mapped = [(m, _map_answer(m.group(1), tpl, n, strict)) for m in found]
    valid = [(m, r) for m, r in mapped if r[2] is None]
    if not valid:
        return Verdict(None, False, found[-1].group(1).strip(), reason=mapped[-1][1][2])
    m, (choice, outcome, _) = valid[-1]
    trailing = text[m.end() :].strip()
    problem = f"text after the verdict: {trailing[:40]!r}" if strict and trailing else None
    return Verdict(
        choice=choice,
        format_ok=problem is None,
        answer=m.group(1).strip(),
        think=text[: m.start()].strip() or None,
        reason=problem,
        outcome=outcome,
    )


def parse_verdict(
    text: str,
    template: str | os.PathLike | JudgeTemplate = "default",
    n_candidates: int = 2,
    strict: bool = False,
) -> Verdict:
    """Parse one judge output with ``template``'s vocabulary for ``n_candidates`` shown candidates.

    Never raises for a malformed output: the problem is in ``Verdict.reason``. Raises
    :class:`RmkitError` for a bad call (non-string text, unknown template, impossible count).
    """
    if not isinstance(text, str):
        raise RmkitError(
            f"parse_verdict needs the judge output as a string, got {type(text).__name__}"
        )
    tpl = get_template(template)
    n = 1 if tpl.is_pointwise else n_candidates
    tpl.check_count(n)
    if tpl.spec.answer_style == "bracket":
        return _parse_bracket(text, tpl, n, strict)
    choice, outcome, score, answer, answer_problem = _tag_answer(text, tpl, n, strict)
    format_problem = check_format(text, tpl.blocks, strict)
    reasons = [r for r in (answer_problem, format_problem) if r]
    return Verdict(
        choice=choice,
        format_ok=format_problem is None,
        answer=answer,
        think=_first_block(text, "think", strict),
        type=_first_block(text, "type", strict),
        caption=_first_block(text, "caption", strict),
        reason="; ".join(dict.fromkeys(reasons)) or None,
        outcome=outcome,
        score=score,
    )
