"""The text pieces of a pipeline report: the headline line, sample verdicts, training rows."""

from __future__ import annotations

from rmkit.cli.run import headline


def test_headline_states_the_gain_and_its_interval():
    summary = {"accuracy_before": 0.52, "accuracy_after": 0.68, "ci95_low": 0.085,
               "ci95_high": 0.235, "n_heldout": 200}  # fmt: skip
    assert headline(summary) == (
        "held-out accuracy 0.520 -> 0.680 (+16.0 points, 95% CI [+8.5, +23.5], n=200): "
        "a significant gain"
    )


def test_headline_with_stages_credits_each_stage_with_its_own_gain():
    summary = {"accuracy_before": 0.5, "accuracy_after": 0.84, "ci95_low": 0.25, "ci95_high": 0.42,
               "n_heldout": 202, "n_clusters": 202, "bootstrap": "cluster",
               "accuracy_sft": 0.8, "sft_gain": 0.3, "sft_gain_ci95_low": 0.21,
               "sft_gain_ci95_high": 0.39, "rl_gain": 0.04, "rl_gain_ci95_low": -0.01,
               "rl_gain_ci95_high": 0.09}  # fmt: skip
    assert headline(summary) == (
        "held-out accuracy 0.500 -> SFT 0.800 (+30.0 points, 95% CI [+21.0, +39.0]: a "
        "significant gain) -> RL 0.840 (+4.0 points, 95% CI [-1.0, +9.0]: no clear change), "
        "n=202 in 202 clusters"
    )


def test_headline_says_when_the_interval_straddles_zero_or_is_below():
    base = {"accuracy_before": 0.5, "n_heldout": 10}
    flat = headline({**base, "accuracy_after": 0.55, "ci95_low": -0.1, "ci95_high": 0.2})
    assert flat.endswith("no clear change")
    drop = headline({**base, "accuracy_after": 0.3, "ci95_low": -0.35, "ci95_high": -0.05})
    assert "-20.0 points" in drop and drop.endswith("a significant drop")


def test_no_headline_without_a_report():
    assert headline({"stages": {}}) is None
    assert headline({"accuracy_before": 0.5, "accuracy_after": None}) is None


def _write_jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_sample_lines_show_right_and_wrong_verdicts(tmp_path):
    from rmkit.pipeline.report import sample_lines

    marks = [False, False, False, True, False, True, True]
    _write_jsonl(tmp_path / "predictions.jsonl", [
        {"id": f"x{i}", "output": f"<answer>{i}</answer>", "correct": c,
         "probabilities": [0.25, 0.75]} for i, c in enumerate(marks)
    ])  # fmt: skip
    lines = sample_lines(tmp_path, 4)
    # the first two right ones and the first two wrong ones, in file order
    assert [ln.split("`")[1] for ln in lines] == ["x0", "x1", "x3", "x5"]
    assert lines[0] == "- `x0`: `<answer>0</answer>` (wrong, p = 0.75)"
    assert lines[2].endswith("(right, p = 0.75)")
    # one kind short: the other fills up
    assert [ln.split("`")[1] for ln in sample_lines(tmp_path, 6)] == [
        "x0",
        "x1",
        "x2",
        "x3",
        "x5",
        "x6",
    ]
    assert sample_lines(tmp_path, 0) == []


def test_train_summary_lists_every_reward_component(tmp_path):
    from rmkit.pipeline.report import train_summary

    _write_jsonl(tmp_path / "metrics.jsonl", [
        {"step": 1, "loss": 0.5, "reward/total": 1.0, "reward/accuracy": 0.5,
         "reward/consistency": 0.25, "step_time/rollout": 2.0},
        {"step": 2, "loss": 0.25, "reward/total": 1.5, "reward/accuracy": 1.0,
         "reward/consistency": 0.75, "step_time/rollout": 4.0},
    ])  # fmt: skip
    s = train_summary(tmp_path)
    assert s["steps"] == 2
    assert list(s["last"]) == ["loss", "reward/total", "reward/accuracy", "reward/consistency"]
    assert s["first"]["reward/consistency"] == 0.25 and s["last"]["reward/consistency"] == 0.75
    assert s["seconds_per_step"] == 3.0
