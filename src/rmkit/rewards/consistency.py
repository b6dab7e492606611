"""Consistency reward (R1-Reward): does the final answer agree with the end of the reasoning?

A separate judge model, reached through any rmkit generation backend (a local model or an
OpenAI-compatible server), reads the end of the reasoning and the final answer and says whether
they agree. Text only: the judge never sees the images.

Two protocols decide how the judge is asked (``protocol``):

* ``rmkit`` (default): the last ``last_lines`` non-empty lines of the ``<think>`` content,
  joined by newlines and capped at ``max_chars`` characters, and the bare ``<answer>`` (e.g.
  ``2``) go into rmkit's yes/no question; greedy, 8 new tokens, asked once; the reply is read as
  yes or no. Completions without a reasoning or an answer are not sent.
* ``released``: the released R1-Reward code's protocol, in rmkit's own words. The context is the
  raw text before the first ``<answer>`` (stripped), split on ``\\n``, its last ``last_lines``
  lines kept as they are (empty lines and ``</think>`` included) and joined by ``;``
  (:func:`released_context`); the answer is sent as a phrase, ``response 1 is better`` /
  ``response 2 is better`` (:func:`verdict_phrase`); the judge is asked for 1 (consistent) or
  0 (not) at temperature 0.1 with up to 4096 new tokens; a reply is read by looking for a
  ``0`` first, then a ``1`` (:func:`read_digit_reply`); a sample whose reply says neither, or
  whose request failed, is asked again, up to 3 attempts in all. Every non-blank completion is
  sent, with or without tags. A judge built from the reward's options skips failed requests
  (``on_error: skip``) under this protocol: a request that still fails after the backend's own
  retries is a failed attempt, and a sample with no verdict after the last attempt scores 0
  (logged as a warning; the backend counts the failures in ``stats["failures"]``). A request
  refused with a client error (HTTP 400, 401, 404, ...) stops the reward instead.

``temperature``, ``max_new_tokens``, ``attempts`` and ``max_chars`` override the protocol's
defaults (:data:`PROTOCOL_DEFAULTS`). Attempt k > 1 sends ``seed=k - 1`` so that a cached or
repeated request does not return the same reply.

Variants (independent of the protocol): ``paper`` scores {1 agree, 0 otherwise}; ``signed``
scores {+1 agree, -1 disagree, 0 when no attempt gave a readable reply or there was nothing to
judge} as the released R1-Reward code does (it penalises a correct answer whose reasoning points
elsewhere). The released judge is ``protocol: released, variant: signed``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from rmkit.errors import ConfigError, RmkitError
from rmkit.rewards.base import RewardSample

log = logging.getLogger(__name__)

VARIANTS = ("paper", "signed")
PROTOCOLS = ("rmkit", "released")
# What each protocol does unless the reward's options say otherwise (max_chars None: no cap).
PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    "rmkit": {"temperature": 0.0, "max_new_tokens": 8, "attempts": 1, "max_chars": 1500},
    "released": {"temperature": 0.1, "max_new_tokens": 4096, "attempts": 3, "max_chars": None},
}

JUDGE_INSTRUCTION = (
    "You check whether an evaluator's final answer agrees with its own reasoning. The evaluator "
    "compared several candidates and then gave the label of the one it prefers.\n\n"
    "End of the evaluator's reasoning:\n{reasoning}\n\n"
    "Evaluator's final answer: {answer}\n\n"
    "Does the final answer pick the same candidate that the reasoning concludes is better? "
    "Reply with a single word: yes or no."
)

# protocol: released. rmkit's own wording in the released prompt's structure: rules for 1 and
# for 0, the reasoning excerpt, the answer phrase, and a cue line (no "reply with one digit").
RELEASED_INSTRUCTION = (
    "Act as a strict checker with a single job: decide whether a model's final answer says the "
    "same thing as the closing part of its own reasoning.\n\n"
    "How to decide:\n"
    "1. Give 1 when the reasoning and the final answer mean the same thing.\n"
    "2. Give 0 when they do not, for instance when\n"
    "   - the reasoning ends without settling on one option,\n"
    "   - the reasoning favours the option the answer rejects,\n"
    "   - the reasoning rates both options as equally good.\n\n"
    "--- Closing part of the model's reasoning ---\n{reasoning}\n\n"
    "--- The model's final answer ---\n{answer}\n\n"
    "Verdict:"
)
VERDICT_PHRASES = {1: "response 1 is better", 2: "response 2 is better"}
TIE_PHRASE = "the two responses are equally good"


def reasoning_tail(think: str, last_lines: int = 3, max_chars: int = 1500) -> str:
    """The last ``last_lines`` non-empty lines of the reasoning, at most ``max_chars`` long."""
    lines = [ln.strip() for ln in think.splitlines() if ln.strip()]
    tail = "\n".join(lines[-last_lines:])
    return tail[-max_chars:]


def judge_conversation(sample: RewardSample, last_lines: int, max_chars: int) -> list[dict] | None:
    """The yes/no question for one sample, or None when it has no reasoning or no answer."""
    think, answer = sample.verdict.think, sample.verdict.answer
    if not think or not answer:
        return None
    text = JUDGE_INSTRUCTION.format(
        reasoning=reasoning_tail(think, last_lines, max_chars), answer=answer.strip()
    )
    return [{"role": "user", "content": text}]


def released_context(completion: str, last_lines: int = 3) -> str:
    """The released protocol's reasoning excerpt: the text before the first ``<answer>`` (the
    whole completion when there is none), stripped, split on ``\\n``, its last ``last_lines``
    lines as they are (empty ones and tags included), joined by ``;``."""
    before = completion.split("<answer>")[0].strip()
    return ";".join(before.split("\n")[-last_lines:])


def verdict_phrase(completion: str) -> str:
    """The released protocol's answer as sent to the judge.

    The content of the first ``<answer>...</answer>``, stripped: an integer 1 or 2 becomes
    ``response 1 is better`` / ``response 2 is better``, any other integer the tie phrase, and
    anything that is not an integer is sent as it is. Without a closed ``<answer>`` block the
    whole completion (stripped) is sent.
    """
    found = re.search(r"<answer>(.*?)</answer>", completion, re.DOTALL)
    if found is None:
        return completion.strip()
    answer = found.group(1).strip()
    try:
        number = int(answer)
    except ValueError:
        return answer
    return VERDICT_PHRASES.get(number, TIE_PHRASE)


def released_conversation(
    sample: RewardSample, last_lines: int, max_chars: int | None
) -> list[dict] | None:
    """The released protocol's 1/0 question for one sample, or None for a blank completion."""
    if not sample.completion.strip():
        return None
    context = released_context(sample.completion, last_lines)
    if max_chars is not None:
        context = context[-max_chars:]
    text = RELEASED_INSTRUCTION.format(reasoning=context, answer=verdict_phrase(sample.completion))
    return [{"role": "user", "content": text}]


def read_agreement(reply: str) -> bool | None:
    """True for a "yes", False for a "no", None when the reply says neither (or both)."""
    words = set(re.findall(r"\b(yes|no)\b", reply.casefold()))
    if len(words) != 1:
        first = re.match(r"\W*(yes|no)\b", reply.casefold())
        return None if first is None else first.group(1) == "yes"
    return words == {"yes"}


def read_digit_reply(reply: str) -> bool | None:
    """The released protocol's reading: any ``0`` in the reply means inconsistent (False), else
    any ``1`` consistent (True), else None (so ``"10"`` and ``"1.0"`` read as inconsistent)."""
    if "0" in reply:
        return False
    if "1" in reply:
        return True
    return None


def score_agreement(agree: bool | None, variant: str) -> float:
    if variant == "paper":
        return 1.0 if agree else 0.0
    return 0.0 if agree is None else (1.0 if agree else -1.0)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def judge_settings(
    protocol: str = "rmkit",
    variant: str = "paper",
    last_lines: int = 3,
    max_chars: int | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    attempts: int | None = None,
) -> dict[str, Any]:
    """Check the reward's options and fill the protocol's defaults (:data:`PROTOCOL_DEFAULTS`)
    for those left None; raises :class:`ConfigError` naming the bad value and what is allowed."""
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"consistency reward: protocol must be one of {PROTOCOLS}, got {protocol!r}",
            hint="rmkit: rmkit's yes/no question; released: the released R1-Reward judge",
        )
    if variant not in VARIANTS:
        raise ConfigError(
            f"consistency reward: variant must be one of {VARIANTS}, got {variant!r}",
            hint="paper: {1, 0}; signed: {+1, -1, 0} (the released R1-Reward scores)",
        )
    given = {
        "max_chars": max_chars,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "attempts": attempts,
    }
    out = {
        "protocol": protocol,
        "variant": variant,
        "last_lines": last_lines,
        **{k: PROTOCOL_DEFAULTS[protocol][k] if v is None else v for k, v in given.items()},
    }
    checks = [
        ("last_lines", _is_int(out["last_lines"]) and out["last_lines"] >= 1, "an integer >= 1"),
        (
            "max_chars",
            out["max_chars"] is None or (_is_int(out["max_chars"]) and out["max_chars"] >= 1),
            "an integer >= 1",
        ),
        (
            "max_new_tokens",
            _is_int(out["max_new_tokens"]) and out["max_new_tokens"] >= 1,
            "an integer >= 1",
        ),
        (
            "temperature",
            isinstance(out["temperature"], (int, float))
            and not isinstance(out["temperature"], bool)
            and out["temperature"] >= 0,
            "a number >= 0",
        ),
        ("attempts", _is_int(out["attempts"]) and out["attempts"] >= 1, "an integer >= 1"),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"consistency reward: {name} must be {expected}, got {out[name]!r}")
    return out


def judge_params(temperature: float, max_new_tokens: int, attempt: int) -> Any:
    """Sampling for attempt ``attempt`` (0-based): no seed at first, then ``seed=attempt``, so a
    re-asked sample is not answered by the cache (or a server) with the reply it gave before."""
    from rmkit.generation.base import SamplingParams

    seed = None if attempt == 0 else attempt
    return SamplingParams(n=1, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)


def _client_errors(backend: Any) -> int:
    """Requests the backend has had refused with a client error so far (an API backend that
    skips failures still counts them; 0 for a backend that keeps no such count)."""
    from rmkit.generation.retry import CLIENT

    stats = getattr(backend, "stats", None)
    failures = stats.get("failures") if isinstance(stats, dict) else None
    return int(failures.get(CLIENT, 0)) if isinstance(failures, dict) else 0


def consistency(
    samples: list[RewardSample],
    backend: Any,
    variant: str = "paper",
    last_lines: int = 3,
    max_chars: int | None = None,
    max_new_tokens: int | None = None,
    *,
    protocol: str = "rmkit",
    temperature: float | None = None,
    attempts: int | None = None,
) -> list[float]:
    """Score each sample's answer/reasoning agreement with batched calls to ``backend``.

    ``backend`` follows rmkit's Backend protocol: ``generate(conversations, params)`` returns one
    list of completions per conversation. One call per attempt: the first asks every sample with
    something to judge, each later one only the samples whose reply could not be read or whose
    request failed (a completion with ``finish_reason="error"``, from a backend that skips
    failures; one that raises stops the reward). A request the server refused with a client
    error (HTTP 4xx other than 408/409/429: a bad request, key or model) raises: asking again
    cannot help, and a misconfigured judge must not turn into rewards of 0. Samples with nothing
    to judge are not sent, and they and the samples with no readable reply after the last
    attempt score 0 (both variants).
    ``protocol``, the defaults of the options left None and what they do: module docstring.
    """
    cfg = judge_settings(
        protocol, variant, last_lines, max_chars, max_new_tokens, temperature, attempts
    )
    if backend is None or not hasattr(backend, "generate"):
        raise RmkitError(
            "the consistency reward needs a judge backend",
            hint="set options.model (local judge) or options.base_url + options.api_model",
        )
    if protocol == "rmkit":
        ask, read, said = judge_conversation, read_agreement, "yes nor no"
    else:
        ask, read, said = released_conversation, read_digit_reply, "1 nor 0"
    convs = [ask(s, cfg["last_lines"], cfg["max_chars"]) for s in samples]
    pending = [i for i, c in enumerate(convs) if c is not None]
    scores = [score_agreement(None, variant) for _ in samples]
    n_asked = len(pending)
    unreadable = failed = 0
    for attempt in range(cfg["attempts"]):
        if not pending:
            break
        params = judge_params(cfg["temperature"], cfg["max_new_tokens"], attempt)
        refused = _client_errors(backend)
        outputs = backend.generate([convs[i] for i in pending], params)
        refused = _client_errors(backend) - refused
        if refused:
            raise RmkitError(
                f"the consistency judge refused {refused} of {len(pending)} request(s) with a "
                f"client error (HTTP 4xx such as 400, 401 or 404: asking again cannot help)",
                hint=f"check the judge server's log; the prompt plus max_new_tokens "
                f"({cfg['max_new_tokens']}) may exceed the judge's context: lower "
                f"options.max_new_tokens",
            )
        if len(outputs) != len(pending):
            raise RmkitError(
                f"consistency judge returned {len(outputs)} results for {len(pending)} questions"
            )
        again, unreadable, failed = [], 0, 0
        for i, outs in zip(pending, outputs, strict=True):
            out = outs[0] if outs else None
            if out is None or out.finish_reason == "error":
                failed += 1
                agree = None
            else:
                agree = read(out.text)
                unreadable += agree is None
            if agree is None:
                again.append(i)
            else:
                scores[i] = score_agreement(agree, variant)
        pending = again
    if pending:
        log.warning(
            "consistency judge: %d of %d samples got no verdict in %d attempt(s) (last attempt: "
            "%d replies were neither %s, %d requests failed); they score 0",
            len(pending), n_asked, cfg["attempts"], unreadable, said, failed,
        )  # fmt: skip
    return scores
