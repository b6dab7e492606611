"""Write the small data the tiny training recipes use (``examples/tiny/``), deterministically.

    python scripts/make_tiny_examples.py [--output examples/tiny]

Files:

- ``prefs.jsonl``: 48 text preference records (arithmetic, colours, opposites, counting) with a
  correct and a wrong candidate, the correct one at a seeded position;
- ``traces.jsonl``: 48 SFT trace records: the default judge prompt for each preference record
  (candidates in a seeded order) and a short ``<think>…</think><answer>K</answer>`` target;
- ``images/``: 4 solid-colour PNGs; ``vlm-prefs.jsonl`` / ``vlm-traces.jsonl``: 16 image
  understanding records ("what colour is this image?") and their traces;
- ``vlm-gen-prefs.jsonl`` / ``vlm-gen-traces.jsonl``: 16 image generation records (prompt "a
  plain <colour> square", the two candidates are the matching PNG and another one) and their
  traces (the judge prompt shows both candidate images).

Running it twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from rmkit.data.records import make_record, write_records
from rmkit.prompts import render_judge_messages

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 210, 40),
}
OPPOSITES = [("hot", "cold"), ("big", "small"), ("left", "right"), ("up", "down"), ("good", "bad")]


def text_items(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """(prompt, correct answer, wrong answer) triples."""
    items = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            a, b = rng.randrange(1, 10), rng.randrange(1, 10)
            items.append(
                (
                    f"What is {a} + {b}?",
                    f"{a} + {b} = {a + b}.",
                    f"{a} + {b} = {a + b + rng.choice([1, 2, -1])}.",
                )
            )
        elif kind == 1:
            name = rng.choice(sorted(COLOURS))
            other = rng.choice([c for c in sorted(COLOURS) if c != name])
            items.append(
                (
                    f"What colour is the sky on a clear day? Say it in one word, then name a {name} thing.",
                    f"Blue. A {name} thing is a {name} car.",
                    f"Green. A {name} thing is a {other} car.",
                )
            )
        elif kind == 2:
            word, opp = OPPOSITES[rng.randrange(len(OPPOSITES))]
            items.append(
                (
                    f"What is the opposite of '{word}'?",
                    f"The opposite of '{word}' is '{opp}'.",
                    f"The opposite of '{word}' is '{word}'.",
                )
            )
        else:
            k = rng.randrange(2, 7)
            items.append(
                (
                    f"How many legs do {k} cats have in total?",
                    f"{k} cats have {4 * k} legs.",
                    f"{k} cats have {4 * k + 2} legs.",
                )
            )
    return items


def preference_records(rng: random.Random, n: int) -> list[dict]:
    records = []
    for i, (prompt, good, bad) in enumerate(text_items(rng, n)):
        label = rng.randrange(2)
        cands = [good, bad] if label == 0 else [bad, good]
        records.append(
            make_record(
                id=f"tiny-{i:03d}",
                source="tiny",
                task="text",
                prompt=prompt,
                candidates=cands,
                label=label,
            )
        )
    return records


def trace_for(record: dict, rng: random.Random) -> dict:
    """The default judge prompt (seeded order) and a short correct verdict as the target.

    Image references (prompt images, or candidate images for generation records) stay relative
    to the records file, as records store them.
    """
    order = [0, 1] if rng.random() < 0.5 else [1, 0]
    messages = render_judge_messages(record, order, "default")
    shown = order.index(record["label"]) + 1
    if record.get("task") == "image_generation":
        why = f"Image {shown} shows what the prompt asks for and the other one does not."
    else:
        why = f"Response {shown} is correct and the other one is not."
    target = f"<think>{why}</think><answer>{shown}</answer>"
    messages.append({"role": "assistant", "content": target})
    refs = [
        part["image"]
        for msg in messages
        if isinstance(msg["content"], list)
        for part in msg["content"]
        if part["type"] == "image"
    ]
    return {"id": f"trace-{record['id']}", "messages": messages, "images": refs}


def vlm_records(rng: random.Random, n: int) -> list[dict]:
    records = []
    names = sorted(COLOURS)
    for i in range(n):
        colour = names[i % len(names)]
        wrong = rng.choice([c for c in names if c != colour])
        label = rng.randrange(2)
        good, bad = f"The image is {colour}.", f"The image is {wrong}."
        cands = [good, bad] if label == 0 else [bad, good]
        records.append(
            make_record(
                id=f"tiny-vlm-{i:03d}",
                source="tiny-vlm",
                task="image_understanding",
                prompt="What colour is this image?",
                images=[f"images/{colour}.png"],
                candidates=cands,
                label=label,
            )
        )
    return records


def vlm_generation_records(rng: random.Random, n: int) -> list[dict]:
    """Image generation records: the candidate showing the asked colour is the preferred one."""
    records = []
    names = sorted(COLOURS)
    for i in range(n):
        colour = names[i % len(names)]
        wrong = rng.choice([c for c in names if c != colour])
        label = rng.randrange(2)
        good, bad = f"images/{colour}.png", f"images/{wrong}.png"
        records.append(
            make_record(
                id=f"tiny-vlm-gen-{i:03d}",
                source="tiny-vlm-gen",
                task="image_generation",
                prompt=f"A plain {colour} square.",
                candidates=[good, bad] if label == 0 else [bad, good],
                label=label,
            )
        )
    return records


def write_images(folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 56), rgb).save(folder / f"{name}.png", optimize=False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--output", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "tiny"
    )
    out = ap.parse_args(argv).output
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20250101)
    prefs = preference_records(rng, 48)
    write_records(out / "prefs.jsonl", prefs)
    write_records(out / "traces.jsonl", [trace_for(r, rng) for r in prefs])
    write_images(out / "images")
    vlm = vlm_records(rng, 16)
    write_records(out / "vlm-prefs.jsonl", vlm)
    write_records(out / "vlm-traces.jsonl", [trace_for(r, rng) for r in vlm])
    gen = vlm_generation_records(rng, 16)
    write_records(out / "vlm-gen-prefs.jsonl", gen)
    write_records(out / "vlm-gen-traces.jsonl", [trace_for(r, rng) for r in gen])
    print(f"wrote {len(prefs)} + {len(vlm)} + {len(gen)} records and their traces to {out}")


if __name__ == "__main__":
    main()
