def test_caption_substituted_generation_candidates_render_as_text():
    from rmkit.prompts import render_judge_messages

    rec = {
        "id": "g#caption",
        "source": "s",
        "task": "image_generation",
        "prompt": "a red cube",
        "images": [],
        "candidates": ["[Image description: a red cube]", "[Image description: a blue ball]"],
        "label": 0,
        "label_kind": "preferred",
        "meta": {"caption_substituted": True},
    }
    msgs = render_judge_messages(rec, [1, 0], "default")
    user = msgs[-1]["content"]
    parts = user if isinstance(user, list) else [{"type": "text", "text": user}]
    assert not any(p.get("type") == "image" for p in parts)
    text = "".join(p.get("text", "") for p in parts)
    assert text.index("description: a blue ball") < text.index("description: a red cube")
    assert "Image 1:" in text  # still worded as a generation comparison
