"""Write the small text examples under examples/text/ in each source's real layout.

Deterministic: rerunning rewrites identical files. The content is written for rmkit; it mimics
each dataset's schema (field names, nesting, value conventions), not its text.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent / "examples" / "text"

QA = [
    (
        "What is the boiling point of water at sea level?",
        "Water boils at 100 degrees Celsius (212 °F) at sea level.",
        "Water boils at 50 degrees Celsius.",
    ),
    (
        "How many legs does a spider have?",
        "Spiders have eight legs.",
        "Spiders have six legs, like all insects.",
    ),
    (
        "What is the capital of Japan?",
        "The capital of Japan is Tokyo.",
        "Japan's capital is Kyoto, which is also its largest city.",
    ),
    (
        "Give me a synonym for 'happy'.",
        "A common synonym for 'happy' is 'joyful'.",
        "A synonym for 'happy' is 'tired'.",
    ),
    (
        "What gas do plants absorb from the air?",
        "Plants absorb carbon dioxide (CO2) and use it for photosynthesis.",
        "Plants absorb oxygen and release nitrogen.",
    ),
    (
        "How many minutes are in an hour?",
        "There are 60 minutes in an hour.",
        "An hour has 100 minutes.",
    ),
    (
        "Which planet is known as the Red Planet?",
        "Mars is called the Red Planet because of iron oxide on its surface.",
        "Jupiter is the Red Planet.",
    ),
    ("What is 12 times 12?", "12 × 12 = 144.", "12 × 12 = 124."),
    (
        "Who wrote 'Romeo and Juliet'?",
        "William Shakespeare wrote 'Romeo and Juliet'.",
        "It was written by Charles Dickens.",
    ),
    (
        "What is the largest ocean on Earth?",
        "The Pacific Ocean is the largest ocean on Earth.",
        "The Atlantic Ocean is the largest.",
    ),
    (
        "How do I politely decline a meeting invitation?",
        "Thank the sender, say you can't attend, and if useful offer another time or ask for notes.",
        "Just ignore it.",
    ),
    (
        "What does a thermometer measure?",
        "A thermometer measures temperature.",
        "A thermometer measures air pressure.",
    ),
]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def hh_rlhf() -> None:
    rows = []
    for i, (q, good, bad) in enumerate(QA):
        prefix = f"\n\nHuman: {q}\n\nAssistant:"
        if i % 3 == 0:  # a multi-turn transcript
            prefix = f"\n\nHuman: Hi, can you help me with a question?\n\nAssistant: Of course, what is it?\n\nHuman: {q}\n\nAssistant:"
        rows.append({"chosen": f"{prefix} {good}", "rejected": f"{prefix} {bad}"})
    write_jsonl(ROOT / "hh-rlhf" / "helpful-base" / "train.jsonl", rows)


def ultrafeedback() -> None:
    rows = []
    for i, (q, good, bad) in enumerate(QA):
        rows.append(
            {
                "prompt": q,
                "prompt_id": f"{i:064x}",
                "chosen": [{"content": q, "role": "user"}, {"content": good, "role": "assistant"}],
                "rejected": [{"content": q, "role": "user"}, {"content": bad, "role": "assistant"}],
                "messages": [
                    {"content": q, "role": "user"},
                    {"content": good, "role": "assistant"},
                ],
                "score_chosen": 9.0 - (i % 3),
                "score_rejected": 3.0 + (i % 2),
            }
        )
    out = ROOT / "ultrafeedback" / "data" / "train_prefs-00000-of-00001.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)


def skywork() -> None:
    rows = []
    for i, (q, good, bad) in enumerate(QA):
        rows.append(
            {
                "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": good}],
                "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": bad}],
                "source": ["magpie_ultra", "offsetbias", "wildguard"][i % 3],
            }
        )
    out = ROOT / "skywork" / "data" / "train-00000-of-00001.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)


def helpsteer3() -> None:
    rows = []
    prefs = [-3, -2, -1, 1, 2, 3, 0, -2, 2, -1, 1, 3]
    for i, (q, good, bad) in enumerate(QA):
        p = prefs[i]
        r1, r2 = (good, bad) if p <= 0 else (bad, good)
        rows.append(
            {
                "domain": ["general", "stem", "general", "multilingual"][i % 4],
                "language": "english",
                "context": [{"role": "user", "content": q}],
                "response1": r1,
                "response2": r2,
                "overall_preference": p,
                "individual_preference": [
                    {
                        "score": p,
                        "reasoning": f"@Response {1 if p <= 0 else 2} is more accurate and answers the question directly.",
                        "feedback1": "",
                        "feedback2": "",
                    }
                ],
            }
        )
    write_jsonl(ROOT / "helpsteer3" / "preference" / "train.jsonl", rows)


def rewardbench() -> None:
    subsets = [
        "alpacaeval-easy",
        "mt-bench-med",
        "llmbar-natural",
        "refusals-dangerous",
        "math-prm",
        "hep-python",
    ]
    rows = [
        {
            "prompt": q,
            "chosen": good,
            "chosen_model": "gpt-4",
            "rejected": bad,
            "rejected_model": "llama-2-7b",
            "subset": subsets[i % len(subsets)],
            "id": 100 + i,
        }
        for i, (q, good, bad) in enumerate(QA)
    ]
    write_jsonl(ROOT / "rewardbench" / "filtered.jsonl", rows)
    rows2 = []
    for i, (q, good, bad) in enumerate(QA[:6]):
        rows2.append(
            {
                "id": str(i),
                "prompt": q,
                "chosen": [good],
                "rejected": [bad, bad.replace(".", "!"), "I am not sure."],
                "num_correct": 1,
                "num_rejected": 3,
                "total_completions": 4,
                "models": ["m1", "m2", "m3", "m4"],
                "subset": ["Factuality", "Focus", "Math"][i % 3],
            }
        )
    write_jsonl(ROOT / "rewardbench2" / "test.jsonl", rows2)


def pairs_csv() -> None:
    out = ROOT / "pairs" / "pairs.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "good_answer", "bad_answer"])
        for q, good, bad in QA:
            w.writerow([q, good, bad])


if __name__ == "__main__":
    hh_rlhf()
    ultrafeedback()
    skywork()
    helpsteer3()
    rewardbench()
    pairs_csv()
    print(f"wrote examples under {ROOT}")
