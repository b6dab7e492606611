"""Generate the quickstart preference data: checkable pairwise judgements.

Kind ``facts`` (the default in recipes/quickstart.yaml; ``--kinds facts``): a question and two
replies, one stating the true fact from ``source/facts.yaml`` and one a wrong value of the same
relation. The other kinds are instruction-following rules, described below.

Every pair is a request with one checkable formatting or wording rule ("use the word
'compost'", "write in lowercase", "end with 'Good luck!'", ...) and two on-topic replies; the
chosen reply follows the rule and the rejected one breaks it. The evidence is visible in the
text, so a small judge can learn to check it, and the generator knows the rule, so every label
is exact and every pair carries a short, order-independent rationale (``rule`` and the
evidence for each reply) from which a checkable reasoning trace is written.

Outputs (``--output``, default ``examples/quickstart``):

- ``train.jsonl``   training pool, ``rmkit build-data --format pairs`` rows
- ``dev.jsonl``     dev pool (facts or topics that never occur in the training pool): every
  setting is chosen on it
- ``final.jsonl``   (facts) one pair per fact of the ``final`` banks, kept apart for the reported
  evaluation only
- ``transfer.jsonl`` (facts) pairs from a relation family that neither training nor dev has
- ``traces.jsonl``  SFT trace records for the training pool: the judge prompt rendered with
  ``judge.jinja`` (candidate order balanced, seeded) and the target
  ``<think>Rule: ... Response 1: ... Response 2: ...</think><answer>K</answer>``

The same ``--seed`` gives byte-identical files. Run from the repository root::

    python scripts/make_quickstart_data.py --seed 0
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rmkit.prompts import render_judge_messages  # noqa: E402
from rmkit.utils.io import dumps_line, write_json_atomic  # noqa: E402

STOPWORDS = set(
    [
        "about",
        "above",
        "after",
        "again",
        "against",
        "along",
        "also",
        "always",
        "among",
        "another",
        "around",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "could",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "every",
        "even",
        "first",
        "from",
        "further",
        "have",
        "having",
        "here",
        "into",
        "just",
        "later",
        "least",
        "little",
        "make",
        "makes",
        "many",
        "more",
        "most",
        "much",
        "never",
        "often",
        "once",
        "only",
        "other",
        "over",
        "same",
        "should",
        "since",
        "some",
        "still",
        "such",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "under",
        "until",
        "very",
        "well",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "will",
        "with",
        "without",
        "would",
        "your",
        "yours",
        "itself",
        "quickly",
        "easier",
        "better",
    ]
)
REQUESTS = [
    "Write a short paragraph about {about}.",
    "Tell me a little about {about}.",
    "Describe {about} in a few sentences.",
    "Can you write a few lines about {about}?",
    "I need a brief note on {about}.",
    "Give me a quick description of {about}.",
    "Share some advice or facts about {about}.",
]
OPENERS = ["Sure!", "Here you go.", "Of course.", "Happy to help.", "Great question."]
CLOSERS = ["Enjoy!", "Good luck!", "Have fun with it.", "Hope this helps.", "That is all."]
START_WORDS = [
    "Sure", "Honestly", "Well", "Absolutely", "Certainly", "Yes", "Okay", "Definitely",
    "Interestingly", "Basically", "Actually", "Naturally",
]  # fmt: skip
END_PHRASES = [
    "Hope this helps.", "Let me know if you have questions.", "Enjoy!", "Good luck!",
    "That is all.", "Have a great day.", "Thanks for asking.", "Happy to help.",
    "Any other questions?", "Take care.",
]  # fmt: skip
NEAR_ENDINGS = {"Hope this helps.": "Hope it helps.", "Take care.": "Take care now."}
POSTSCRIPTS = [
    "It is easier than it sounds.", "Small steps add up.", "Ask a friend to join you.",
    "Start today if you can.", "Keep notes as you go.",
]  # fmt: skip
INSTRUCTIONS = {
    "topic": ["", "Keep it short.", "I am a beginner.", "Please be friendly.",
              "A few tips would help.", "Two sentences are enough."],
    "mention": ["Use the word {w} in your reply.", "Make sure your reply mentions {w}.",
                "Include the word {w} somewhere in it."],
    "include": ['Use the word "{w}" in your answer.', 'Make sure to include the word "{w}".',
                'Your reply must mention "{w}".'],
    "avoid": ['Do not use the word "{w}".', 'Avoid the word "{w}" entirely.',
              'Never say "{w}" in your reply.'],
    "start": ['Start your reply with the word "{w}".', 'Begin your answer with "{w}".',
              'The first word of your reply must be "{w}".'],
    "end": ['End your reply with the exact phrase "{w}"', 'Finish with the words "{w}"',
            'Your last words must be "{w}"'],
    "lower": ["Write your whole answer in lowercase letters.",
              "Use only lowercase letters, no capitals at all.", "Reply entirely in lowercase."],
    "upper": ["Write your whole answer in capital letters.", "Reply in all caps.",
              "Use only uppercase letters."],
    "commas": ["Do not use any commas.", "Write it without a single comma.",
               "Avoid commas completely."],
    "quotes": ["Wrap your entire reply in double quotation marks.",
               "Put the whole answer inside double quotes.",
               "Enclose your full response in quotation marks."],
    "title": ["Give your answer a title wrapped in double angular brackets, like <<title>>.",
              "Start with a title in double angle brackets, for example <<my title>>.",
              "Include a title inside << and >>."],
    "postscript": ["At the end, add a postscript starting with P.S.",
                   "Add a P.S. at the end of your reply.",
                   "Finish with a postscript that begins with P.S."],
}  # fmt: skip
KINDS = [*INSTRUCTIONS, "facts"]
DEFAULT_KINDS = ["mention"]


@dataclass
class Topic:
    about: str
    sentences: list[str]
    keywords: list[str]


@dataclass
class Pair:
    """One generated pair: the reply that follows ``rule`` first, with evidence for each reply."""

    prompt: str
    chosen: str
    rejected: str
    kind: str
    rule: str
    chosen_evidence: str
    rejected_evidence: str
    topic: str


def has_word(text: str, word: str) -> bool:
    """Whole-word, case-insensitive match (the rule the include/avoid constraints use)."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text, re.IGNORECASE) is not None


def words_of(text: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", text)


def load_topics(path: Path) -> dict[str, list[Topic]]:
    """Read the sentence bank and derive each topic's keywords."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    out: dict[str, list[Topic]] = {}
    for pool in ("train", "heldout"):
        out[pool] = [_topic(t["about"], list(t["sentences"])) for t in data[pool]]
    return out


def _topic(about: str, sentences: list[str]) -> Topic:
    counts: dict[str, int] = {}
    for s in sentences:
        for w in {w.lower() for w in words_of(s)}:
            counts[w] = counts.get(w, 0) + 1
    keywords = sorted(
        w
        for w, c in counts.items()
        if len(w) >= 5 and w not in STOPWORDS and "'" not in w and c <= len(sentences) - 3
    )
    return Topic(about, sentences, keywords)


def near_forms(topic: Topic, word: str) -> list[str]:
    """Words of the topic that share a 4+ letter stem with ``word`` but are not ``word``."""
    stem = word[: max(4, len(word) - 3)]
    found = {w.lower() for s in topic.sentences for w in words_of(s)}
    return sorted(w for w in found if w != word and w.startswith(stem) and len(w) >= 4)


def sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def after_lead(lead: str, text: str) -> str:
    """``lead`` then ``text``; a lead ending in a comma continues the sentence in lowercase."""
    if lead.endswith(","):
        return f"{lead} {text[:1].lower()}{text[1:]}"
    return f"{lead} {text}"


def assemble(rng: random.Random, sentences: list[str], opener: bool = True, closer: bool = True):
    """A reply: maybe an opener, 1-2 of ``sentences`` in random order, maybe a closer."""
    k = min(len(sentences), rng.choice([1, 2, 2]))
    body = rng.sample(sentences, k)
    parts = []
    if opener and rng.random() < 0.35:
        parts.append(rng.choice(OPENERS))
    parts += body
    if closer and rng.random() < 0.25:
        parts.append(rng.choice(CLOSERS))
    return " ".join(parts)


def _pool(topic: Topic, keep: Callable[[str], bool]) -> list[str]:
    return [s for s in topic.sentences if keep(s)]


def make_word_pair(rng: random.Random, topic: Topic, kind: str) -> tuple | None:
    """include/avoid: one reply has the keyword, the other lacks it (near forms when possible)."""
    word = rng.choice(topic.keywords)
    with_w = _pool(topic, lambda s: has_word(s, word))
    without = _pool(topic, lambda s: not has_word(s, word))
    near = [n for n in near_forms(topic, word) if any(has_word(s, n) for s in without)]
    first = rng.choice(with_w)
    rest = [s for s in without if s != first]
    extra = rng.sample(rest, rng.choice([0, 1, 1]))
    has = " ".join([first, *extra] if rng.random() < 0.5 else [*extra, first])
    if near and rng.random() < 0.7:
        n = rng.choice(near)
        seed = [s for s in without if has_word(s, n)]
        others = [s for s in without if s not in seed]
        extra = rng.sample(others, rng.choice([0, 1, 1]))
        lacks = " ".join(rng.sample(seed, 1) + extra if rng.random() < 0.5 else extra + seed[:1])
        lack_ev = f'has "{n}", not "{word}"'
    else:
        lacks = assemble(rng, without, closer=False)
        lack_ev = f'no "{word}"'
    if has_word(lacks, word) or not has_word(has, word):
        return None
    has_ev = f'uses "{word}"'
    if kind == "include":
        return word, f'use "{word}"', has, lacks, has_ev, lack_ev
    return word, f'avoid "{word}"', lacks, has, lack_ev, has_ev


def has_lower_word(text: str, word: str) -> bool:
    """``word`` in lowercase after a space: the same token as in the instruction."""
    return re.search(rf"(?<= ){re.escape(word)}(?![\w-])", text) is not None


def make_mention_pair(rng: random.Random, topic: Topic) -> tuple | None:
    """mention: one reply uses the word (lowercase, mid-sentence), the other has no form of it.

    The plain version of include: the word is written exactly as the instruction writes it, and
    the other reply has neither the word nor a near form, so the evidence is one visible token.
    """
    words = [w for w in topic.keywords if any(has_lower_word(s, w) for s in topic.sentences)]
    if not words:
        return None
    word = rng.choice(words)
    stem = word[: max(4, len(word) - 3)]
    with_w = _pool(topic, lambda s: has_lower_word(s, word))
    without = _pool(topic, lambda s: stem not in s.lower())
    if not with_w or not without:
        return None
    first = rng.choice(with_w)
    rest = [s for s in without if s != first]
    extra = rng.sample(rest, min(len(rest), rng.choice([0, 1, 1])))
    has = " ".join([first, *extra] if rng.random() < 0.5 else [*extra, first])
    lacks = assemble(rng, without, opener=False, closer=False)
    if stem in lacks.lower() or not has_lower_word(has, word):
        return None
    return word, f"use {word}", has, lacks, f"uses {word}", f"no {word}"


def first_word(text: str) -> str:
    return words_of(text)[0]


def make_start_pair(rng: random.Random, topic: Topic) -> tuple | None:
    word = rng.choice(START_WORDS)
    chosen = after_lead(f"{word},", assemble(rng, topic.sentences, opener=False))
    other = rng.choice([w for w in START_WORDS if w != word])
    if rng.random() < 0.5:
        rejected = after_lead(f"{other},", assemble(rng, topic.sentences, opener=False))
    else:
        rejected = assemble(rng, topic.sentences, opener=False)
    if rng.random() < 0.3:  # distractor: the word appears, but not first
        rejected += f" {word}, it is worth trying."
    if first_word(rejected).lower() == word.lower():
        return None
    return (word, f'start with "{word}"', chosen, rejected,
            f'starts with "{first_word(chosen)}"', f'starts with "{first_word(rejected)}"')  # fmt: skip


def last_words(text: str, k: int) -> str:
    return " ".join(text.split()[-k:])


def make_end_pair(rng: random.Random, topic: Topic) -> tuple | None:
    phrase = rng.choice(END_PHRASES)
    chosen = assemble(rng, topic.sentences, closer=False) + " " + phrase
    r = rng.random()
    rejected = assemble(rng, topic.sentences, opener=False, closer=False)
    if r < 0.3 and phrase in NEAR_ENDINGS:
        rejected += " " + NEAR_ENDINGS[phrase]
    elif r < 0.6:
        rejected = phrase + " " + rejected  # distractor: the phrase, but at the start
    elif r < 0.8:
        rejected += " " + rng.choice([p for p in END_PHRASES if p != phrase])
    if rejected.endswith(phrase):
        return None
    k = len(phrase.split())
    return (phrase, f'end with "{phrase}"', chosen, rejected, f'ends with "{last_words(chosen, k)}"',
            f'ends with "{last_words(rejected, k)}"')  # fmt: skip


def make_case_pair(rng: random.Random, topic: Topic, kind: str) -> tuple | None:
    base_c = assemble(rng, topic.sentences)
    base_r = assemble(rng, topic.sentences)
    if kind == "lower":
        chosen = base_c.lower()
        rejected = base_r if rng.random() < 0.5 else sentence_case(base_r.lower())
        if chosen == base_c or rejected == rejected.lower():
            return None
        return None, "all lowercase", chosen, rejected, "all lowercase", "has capitals"
    chosen = base_c.upper()
    if rng.random() < 0.5:
        rejected = base_r
    else:  # distractor: only the first sentence shouted
        head, _, tail = base_r.partition(". ")
        rejected = head.upper() + (". " + tail if tail else "")
    if rejected == rejected.upper():
        return None
    return None, "all capitals", chosen, rejected, "all capitals", "has lowercase"


def make_comma_pair(rng: random.Random, topic: Topic) -> tuple | None:
    plain = _pool(topic, lambda s: "," not in s)
    commas = _pool(topic, lambda s: "," in s)
    if len(plain) < 3:
        return None
    chosen = " ".join(rng.sample(plain, rng.choice([1, 2, 2])))
    if commas and rng.random() < 0.7:
        parts = rng.sample(plain, rng.choice([0, 1])) + rng.sample(commas, 1)
        rng.shuffle(parts)
        rejected = " ".join(parts)
    else:
        lead = rng.choice(["Sure, here is a short answer.", "Well,", "Of course,", "So,"])
        rejected = after_lead(lead, " ".join(rng.sample(plain, rng.choice([1, 2]))))
    if "," in chosen or "," not in rejected:
        return None
    return None, "no commas", chosen, rejected, "no commas", "has commas"


def make_quote_pair(rng: random.Random, topic: Topic) -> tuple | None:
    chosen = '"' + assemble(rng, topic.sentences) + '"'
    body = assemble(rng, topic.sentences)
    r = rng.random()
    if r < 0.35:  # distractor: a quotation inside, not around the reply
        s = body.split(". ")
        s[0] = f'"{s[0]}"'
        rejected = ". ".join(s)
    elif r < 0.5:
        rejected = '"' + body  # opened but never closed
    else:
        rejected = body
    if rejected.startswith('"') and rejected.endswith('"'):
        return None
    return None, "wrapped in quotes", chosen, rejected, "wrapped in quotes", "not wrapped"


def make_title_pair(rng: random.Random, topic: Topic) -> tuple | None:
    title = " ".join(w.capitalize() if len(w) > 3 else w for w in topic.about.split())
    title = title[:1].upper() + title[1:]
    chosen = f"<<{title}>>\n" + assemble(rng, topic.sentences, opener=False)
    body = assemble(rng, topic.sentences, opener=False)
    style = rng.choice(["none", "none", "colon", "bold", "hash", "single"])
    head = {"none": "", "colon": f"Title: {title}\n", "bold": f"**{title}**\n",
            "hash": f"# {title}\n", "single": f"<{title}>\n"}[style]  # fmt: skip
    return None, "title in <<>>", chosen, head + body, "has a <<title>>", "no <<title>>"


def make_ps_pair(rng: random.Random, topic: Topic) -> tuple | None:
    note = rng.choice(POSTSCRIPTS)
    chosen = assemble(rng, topic.sentences, closer=False) + f"\n\nP.S. {note}"
    body = assemble(rng, topic.sentences, closer=False)
    lead = rng.choice(["", "", "Note: ", "By the way, ", "Also: "])
    rejected = body + (f"\n\n{lead}{note[:1].lower() + note[1:]}" if lead else "")
    if lead == "":
        rejected = body
    return None, "add a P.S.", chosen, rejected, "has a P.S.", "no P.S."


BUILDERS: dict[str, Callable[[random.Random, Topic], tuple | None]] = {
    "mention": make_mention_pair,
    "include": lambda rng, t: make_word_pair(rng, t, "include"),
    "avoid": lambda rng, t: make_word_pair(rng, t, "avoid"),
    "start": make_start_pair,
    "end": make_end_pair,
    "lower": lambda rng, t: make_case_pair(rng, t, "lower"),
    "upper": lambda rng, t: make_case_pair(rng, t, "upper"),
    "commas": make_comma_pair,
    "quotes": make_quote_pair,
    "title": make_title_pair,
    "postscript": make_ps_pair,
}


def make_topic_pair(rng: random.Random, topic: Topic, others: list[Topic]) -> tuple | None:
    """topic: one reply is about what was asked, the other about a different topic of the pool."""
    other = rng.choice([t for t in others if t.about != topic.about])
    on = assemble(rng, topic.sentences)
    off = assemble(rng, other.sentences)
    return other.about, "stay on topic", on, off, "on topic", f"about {other.about}"


FACT_OPENERS = ["", "Quick question: ", "I was wondering: ", "Please answer briefly. "]


def load_facts(path: Path, seed: int) -> dict[str, list[tuple[str, str, str]]]:
    """The fact pools, each a list of ``(relation, key, value)``; no (relation, key) is in two.

    - ``train`` / ``dev``: each ordinary relation's ``facts`` keys, shuffled (seeded) and split in
      half, so no dev question occurs in training.
    - ``final``: each relation's ``final`` facts, a bank kept apart for the reported evaluation
      (never used while choosing settings).
    - ``transfer``: every fact of the relations marked ``transfer: true``, a relation family that
      neither training nor dev contains.
    """
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    out: dict[str, list[tuple[str, str, str]]] = {p: [] for p in POOLS}
    rng = random.Random(f"{seed}:facts")
    for rel in sorted(data):
        spec = data[rel]
        if spec.get("transfer"):
            out["transfer"] += [(rel, k, str(spec["facts"][k])) for k in sorted(spec["facts"])]
            continue
        keys = sorted(spec["facts"])
        rng.shuffle(keys)
        half = len(keys) // 2
        for pool, part in (("train", keys[:half]), ("dev", keys[half:])):
            out[pool] += [(rel, k, str(spec["facts"][k])) for k in part]
        out["final"] += [(rel, k, str(v)) for k, v in sorted((spec.get("final") or {}).items())]
    seen: dict[tuple[str, str], str] = {}
    for pool in POOLS:
        for rel, key, _ in out[pool]:
            if (rel, key) in seen:
                raise ValueError(f"{path}: {rel} '{key}' is in both the {seen[rel, key]} and "
                                 f"the {pool} pool; every fact belongs to one pool")  # fmt: skip
            seen[rel, key] = pool
    return out


POOLS = ("train", "dev", "final", "transfer")


def _fact_row(rng: random.Random, spec: dict, fact: tuple[str, str, str], bad: str, rid: str):
    rel, key, value = fact
    fill = {"key": key, "key_cap": key[:1].upper() + key[1:]}
    true = sentence_case(spec["sentence"].format(value=value, **fill))
    false = sentence_case(spec["sentence"].format(value=bad, **fill))
    question = spec["question"].format(**fill)
    prompt = rng.choice(FACT_OPENERS) + question
    return {"id": rid, "prompt": prompt, "chosen": true, "rejected": false, "kind": "facts",
            "rule": f"{rel}: {key}", "question": question, "cluster": f"{rel}:{key}",
            "chosen_evidence": f"{value} is right", "rejected_evidence": f"{bad} is wrong",
            "topic": rel}  # fmt: skip


def make_fact_rows(
    rng: random.Random, bank: dict, facts: list[tuple[str, str, str]], n: int, tag: str
) -> list[dict]:
    """``n`` pairs: a question, the true statement (chosen) and a false one (rejected) whose
    value is another key's value of the same relation; distinct (question, false value).
    ``cluster`` names the fact (``relation:key``): pairs about one fact share it."""
    rows, seen, tries = [], set(), 0
    while len(rows) < n:
        tries += 1
        if tries > 100 * n:
            raise RuntimeError(f"{tag}: could not make {n} distinct fact pairs (got {len(rows)})")
        rel, key, value = facts[(len(rows) + tries) % len(facts)]
        spec = bank[rel]
        wrong = sorted({str(v) for v in spec["facts"].values()} - {value})
        bad = rng.choice(wrong)
        if (rel, key, bad) in seen:
            continue
        seen.add((rel, key, bad))
        rows.append(_fact_row(rng, spec, (rel, key, value), bad, f"{tag}-{len(rows):04d}"))
    return rows


def make_fact_rows_each(
    rng: random.Random, bank: dict, facts: list[tuple[str, str, str]], per_fact: int, tag: str
) -> list[dict]:
    """``per_fact`` pairs for every fact, in order, each with a different false value drawn from
    all the relation's values (its ``facts`` and ``final`` banks)."""
    rows = []
    for rel, key, value in facts:
        spec = bank[rel]
        values = {str(v) for part in ("facts", "final") for v in (spec.get(part) or {}).values()}
        wrong = sorted(values - {value})
        for bad in rng.sample(wrong, per_fact):
            rows.append(_fact_row(rng, spec, (rel, key, value), bad, f"{tag}-{len(rows):04d}"))
    return rows


def make_pair(
    rng: random.Random, topic: Topic, kind: str, pool: list[Topic] | None = None
) -> Pair | None:
    if kind == "topic":
        built = make_topic_pair(rng, topic, pool or [])
    else:
        built = BUILDERS[kind](rng, topic)
    if built is None:
        return None
    word, rule, chosen, rejected, ev_c, ev_r = built
    instruction = rng.choice(INSTRUCTIONS[kind]).format(w=word)
    request = rng.choice(REQUESTS).format(about=topic.about)
    prompt = f"{request} {instruction}".strip()
    if chosen.strip() == rejected.strip():
        return None
    return Pair(prompt, chosen, rejected, kind, rule, ev_c, ev_r, topic.about)


def make_pool(
    rng: random.Random, topics: list[Topic], n: int, tag: str, kinds: list[str]
) -> list[dict]:
    """``n`` pairs with distinct prompts, constraint kinds in equal shares, topics round-robin."""
    rows, seen, tries = [], set(), 0
    while len(rows) < n:
        tries += 1
        if tries > 50 * n:
            raise RuntimeError(f"{tag}: could not make {n} distinct pairs (got {len(rows)})")
        kind = kinds[len(rows) % len(kinds)]
        topic = topics[(len(rows) // len(kinds) + len(rows) + tries) % len(topics)]
        pair = make_pair(rng, topic, kind, topics)
        if pair is None or pair.prompt in seen:
            continue
        seen.add(pair.prompt)
        rows.append({"id": f"{tag}-{len(rows):04d}", **pair.__dict__})
    return rows


def trace_text(row: dict, order: list[int], style: str = "think") -> tuple[str, int]:
    """(target text, 1-based answer) for ``row`` shown in ``order`` (0 = chosen, 1 = rejected).

    ``style`` "direct": ``<answer>K</answer>``; "think": the rule and each reply's evidence in
    a think block first; "copy": the think block repeats the correct reply and its label,
    ``<think>The capital of Peru is Lima. (K)</think><answer>K</answer>``; "qa": the same after
    the bare question (facts only), so the reply is written right after the question, as when
    the model answers it itself.
    """
    answer = order.index(0) + 1
    if style == "direct":
        return f"<answer>{answer}</answer>", answer
    if style in ("copy", "qa"):
        lead = f"{row['question']} " if style == "qa" else ""
        return f"<think>{lead}{row['chosen']} ({answer})</think><answer>{answer}</answer>", answer
    ev = [row["chosen_evidence"], row["rejected_evidence"]]
    parts = [f"Rule: {row['rule']}", f"Response 1: {ev[order[0]]}", f"Response 2: {ev[order[1]]}"]
    think = " ".join(p if p.endswith(('."', '!"', '?"')) else p + "." for p in parts)
    return f"<think>{think}</think><answer>{answer}</answer>", answer


def make_traces(rows: list[dict], template: Path, seed: int, style: str) -> list[dict]:
    """SFT trace records: every pair twice, once in each candidate order, the two adjacent.

    Read in file order (``data.shuffle: false``) with an even batch size, every batch holds both
    orders of the same pairs, so a constant preference for one position earns no loss
    reduction: the gradient can only come from the content. The pairs themselves are shuffled
    (seeded) so consecutive batches mix kinds.
    """
    pairs = list(rows)
    random.Random(f"{seed}:traces").shuffle(pairs)
    out = []
    for row in pairs:
        for order in ([0, 1], [1, 0]):
            record = {"id": row["id"], "prompt": row["prompt"], "task": "text",
                      "candidates": [row["chosen"], row["rejected"]], "label": 0}  # fmt: skip
            messages = render_judge_messages(record, order, template)
            target, answer = trace_text(row, order, style)
            messages.append({"role": "assistant", "content": target})
            out.append({"id": f"{row['id']}-{answer}", "messages": messages, "images": [],
                        "verdict": str(answer), "correct": True,
                        "meta": {"kind": row["kind"], "order": order}})  # fmt: skip
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    data = b"".join(dumps_line(r) for r in rows)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=800, help="pairs in the training pool")
    ap.add_argument("--dev", type=int, default=300, help="pairs in the dev pool")
    ap.add_argument(
        "--transfer-per-fact", type=int, default=2, help="pairs per fact of a transfer relation"
    )
    ap.add_argument("--output", type=Path, default=ROOT / "examples" / "quickstart")
    ap.add_argument("--bank", type=Path, default=ROOT / "examples/quickstart/source/topics.yaml")
    ap.add_argument("--facts", type=Path, default=ROOT / "examples/quickstart/source/facts.yaml")
    ap.add_argument("--template", type=Path, default=ROOT / "examples/quickstart/judge.jinja")
    ap.add_argument(
        "--kinds", default=",".join(DEFAULT_KINDS), help=f"comma list of {', '.join(KINDS)}"
    )
    ap.add_argument("--trace", choices=("direct", "think", "copy", "qa"), default="copy")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        ap.error(f"--kinds: unknown {unknown}; choose from {', '.join(KINDS)}")
    if args.trace == "qa" and kinds != ["facts"]:
        ap.error("--trace qa restates the bare question: it needs --kinds facts")
    rng = random.Random(args.seed)
    pools: dict[str, list[dict]] = {}
    if kinds == ["facts"]:
        bank = yaml.safe_load(args.facts.read_text(encoding="utf-8"))
        facts = load_facts(args.facts, args.seed)
        pools["train"] = make_fact_rows(rng, bank, facts["train"], args.train, "qs-train")
        pools["dev"] = make_fact_rows(rng, bank, facts["dev"], args.dev, "qs-dev")
        pools["final"] = make_fact_rows_each(rng, bank, facts["final"], 1, "qs-final")
        per = args.transfer_per_fact
        pools["transfer"] = make_fact_rows_each(rng, bank, facts["transfer"], per, "qs-transfer")
        clusters = {p: len({r["cluster"] for r in rows}) for p, rows in pools.items()}
    else:
        topics = load_topics(args.bank)
        pools["train"] = make_pool(rng, topics["train"], args.train, "qs-train", kinds)
        pools["dev"] = make_pool(rng, topics["heldout"], args.dev, "qs-dev", kinds)
        clusters = {"train": len(topics["train"]), "dev": len(topics["heldout"])}
    args.output.mkdir(parents=True, exist_ok=True)
    for pool, rows in pools.items():
        write_jsonl(args.output / f"{pool}.jsonl", rows)
    traces = make_traces(pools["train"], args.template, args.seed, args.trace)
    write_jsonl(args.output / "traces.jsonl", traces)
    counts = {k: sum(r["kind"] == k for r in pools["train"]) for k in kinds}
    write_json_atomic(args.output / "stats.json", {
        "seed": args.seed, "trace": args.trace, "kinds": counts,
        "transfer_per_fact": args.transfer_per_fact,
        "pairs": {p: len(rows) for p, rows in pools.items()}, "clusters": clusters,
    })  # fmt: skip
    print(
        "wrote " + ", ".join(f"{len(r)} {p}" for p, r in pools.items()) + f" pairs to {args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
