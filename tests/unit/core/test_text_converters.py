"""Each text converter on rows in its source's real layout (examples/text/)."""

from __future__ import annotations

import pytest

from rmkit.data.records import make_record, record_problem
from rmkit.data.sources import CONVERTERS, RowError, Skip
from rmkit.data.sources.base import EmptyAnswer
from rmkit.data.sources.text import parse_hh_transcript


def convert(fmt, row, **opts):
    spec = CONVERTERS[fmt]
    return spec.fn(row, {**spec.options, **opts})


def valid(pair):
    rec = make_record(
        id="x:1",
        source="x",
        task=pair.task,
        prompt=pair.prompt,
        candidates=pair.candidates,
        label=pair.label,
        label_kind=pair.label_kind,
        images=pair.images,
        meta=pair.meta,
    )
    assert record_problem(rec) is None, record_problem(rec)
    return pair


def test_hh_rlhf_single_and_multi_turn():
    row = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: 4",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: 5",
    }
    (p,) = convert("hh-rlhf", row)
    valid(p)
    assert p.prompt == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
    ]
    assert p.candidates == ["4", "5"] and p.label == 0
    (p,) = convert(
        "hh-rlhf",
        {"chosen": "\n\nHuman: Q\n\nAssistant: yes", "rejected": "\n\nHuman: Q\n\nAssistant: no"},
    )
    assert p.prompt == "Q"


def test_hh_rlhf_diverging_earlier_backs_off_to_shared_turn():
    row = {
        "chosen": "\n\nHuman: Q\n\nAssistant: A\n\nHuman: more\n\nAssistant: B",
        "rejected": "\n\nHuman: Q\n\nAssistant: C",
    }
    (p,) = convert("hh-rlhf", row)
    assert p.prompt == "Q"
    assert p.candidates == ["A\n\nHuman: more\n\nAssistant: B", "C"]


def test_hh_rlhf_errors_name_fields():
    with pytest.raises(RowError) as e:
        convert("hh-rlhf", {"chosen": "\n\nHuman: Q\n\nAssistant: A"})
    assert e.value.field == "rejected"
    # an empty answer is legitimate HH-RLHF data: the empty_answer filter, not a malformed row
    with pytest.raises(EmptyAnswer) as e:
        convert(
            "hh-rlhf",
            {"chosen": "\n\nHuman: Q\n\nAssistant:", "rejected": "\n\nHuman: Q\n\nAssistant: x"},
        )
    assert e.value.field == "chosen" and e.value.reason.startswith("empty_answer:")
    with pytest.raises(RowError) as e:
        convert("hh-rlhf", {"chosen": 3, "rejected": "x"})
    assert e.value.field == "chosen" and "string" in e.value.expected


def test_parse_hh_transcript_rejects_leading_text():
    with pytest.raises(ValueError):
        parse_hh_transcript("oops\n\nHuman: x")


def test_ultrafeedback():
    row = {
        "prompt": "Q?",
        "prompt_id": "abc",
        "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "bad"}],
        "score_chosen": 8.0,
        "score_rejected": 2.0,
    }
    (p,) = convert("ultrafeedback", row)
    valid(p)
    assert (p.prompt, p.candidates, p.label, p.key) == ("Q?", ["good", "bad"], 0, "abc")
    assert p.meta == {"score_chosen": 8.0, "score_rejected": 2.0}
    with pytest.raises(Skip):
        convert("ultrafeedback", {**row, "score_rejected": 8.0}, drop_ties=True)
    with pytest.raises(RowError) as e:
        convert(
            "ultrafeedback",
            {
                **row,
                "rejected": [
                    {"role": "user", "content": "Other"},
                    {"role": "assistant", "content": "bad"},
                ],
            },
        )
    assert e.value.field == "rejected"


def test_skywork_and_role_errors():
    row = {
        "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "b"}],
        "source": "magpie",
    }
    (p,) = convert("skywork", row)
    assert p.meta == {"origin": "magpie"} and p.candidates == ["a", "b"]
    with pytest.raises(RowError) as e:
        convert("skywork", {**row, "chosen": [{"role": "robot", "content": "Q"}]})
    assert e.value.field == "chosen[0].role"
    with pytest.raises(RowError) as e:
        convert("skywork", {**row, "chosen": [{"role": "user", "content": "Q"}]})
    assert "ending with an assistant" in e.value.expected


@pytest.mark.parametrize("pref,label", [(-3, 0), (-1, 0), (1, 1), (3, 1)])
def test_helpsteer3_sign_convention(pref, label):
    row = {
        "context": [{"role": "user", "content": "Q"}],
        "response1": "r1",
        "response2": "r2",
        "overall_preference": pref,
        "domain": "stem",
    }
    (p,) = convert("helpsteer3", row)
    valid(p)
    assert p.label == label and p.candidates == ["r1", "r2"] and p.subset == "stem"


def test_helpsteer3_ties_and_strength():
    row = {
        "context": [{"role": "user", "content": "Q"}],
        "response1": "r1",
        "response2": "r2",
        "overall_preference": 0,
    }
    with pytest.raises(Skip, match="tie"):
        convert("helpsteer3", row)
    (p,) = convert("helpsteer3", row, keep_ties=True)
    assert p.label is None and p.label_kind == "tie"
    valid(p)
    with pytest.raises(Skip, match="weak"):
        convert("helpsteer3", {**row, "overall_preference": 1}, min_strength=2)
    with pytest.raises(RowError) as e:
        convert("helpsteer3", {**row, "overall_preference": 7})
    assert e.value.field == "overall_preference"


def test_rewardbench_v1_and_v2():
    (p,) = convert(
        "rewardbench",
        {"prompt": "Q", "chosen": "a", "rejected": "b", "subset": "mt-bench-med", "id": 7},
    )
    assert p.key == "7" and p.subset == "mt-bench-med" and p.candidates == ["a", "b"]
    pairs = convert(
        "rewardbench",
        {
            "prompt": "Q",
            "chosen": ["a1", "a2"],
            "rejected": ["b", "c", "d"],
            "subset": "Ties",
            "id": "9",
        },
    )
    assert [x.candidates for x in pairs] == [["a1", "b", "c", "d"], ["a2", "b", "c", "d"]]
    assert [x.key for x in pairs] == ["9.0", "9.1"] and all(x.label == 0 for x in pairs)
    valid(pairs[0])


def test_pairs_column_mapping_and_conversational():
    (p,) = convert(
        "pairs",
        {"question": "Q", "good": "a", "bad": "b"},
        columns={"prompt": "question", "chosen": "good", "rejected": "bad"},
    )
    assert (p.prompt, p.candidates) == ("Q", ["a", "b"])
    conv = {
        "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "b"}],
    }
    (p,) = convert("pairs", conv)
    assert p.prompt == "Q" and p.candidates == ["a", "b"]
    trl = {
        "prompt": [{"role": "user", "content": "Q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    (p,) = convert("pairs", trl)
    assert p.prompt == "Q" and p.candidates == ["a", "b"]
    with pytest.raises(RowError) as e:
        convert(
            "pairs",
            {"question": "Q", "good": "a"},
            columns={"prompt": "question", "chosen": "good", "rejected": "bad"},
        )
    assert e.value.field == "bad"
