"""Print the judge prompt, raw output and parsed verdict of each line of a predictions.jsonl."""

from __future__ import annotations

import sys

import orjson


def main(path: str) -> None:
    with open(path, "rb") as fh:
        for line in fh:
            p = orjson.loads(line)
            user = p["prompt"][-1]["content"]
            text = user if isinstance(user, str) else " ".join(x.get("text", "") for x in user)
            print("=" * 78)
            print(f"item {p['id']}  (candidates shown in order {p['order']})")
            print("-" * 78 + "\nprompt sent to the judge:\n" + text)
            print("-" * 78 + "\njudge output:\n" + p["output"].strip())
            print("-" * 78)
            verdict = p.get("verdict") or {}
            choice = verdict.get("choice")
            shown = "unparsable" if choice is None else f"candidate {choice + 1} as shown"
            print(
                f"parsed verdict: {shown}; correct: {p.get('correct')}  ({verdict.get('reason') or 'format ok'})"
            )


if __name__ == "__main__":
    main(sys.argv[1])
