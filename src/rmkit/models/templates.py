"""ChatML chat templates that understand rmkit's content parts.

rmkit messages carry ``content`` either as a string or as a list of parts
(``{"type": "text", "text": ...}`` / ``{"type": "image", "image": path}``). The templates built
here render both forms; each image part becomes the placeholder text the model family's
processor expands into image tokens (or an error for text-only models). All literal text sits
inside Jinja expressions so the output never depends on template whitespace.
"""

from __future__ import annotations

SMOLLM2_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# The placeholder a processor expects for one image, per model family.
QWEN_VL_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
IDEFICS3_IMAGE = "<image>"
LLAVA_IMAGE = "<image>"


def _quote(text: str) -> str:
    """A Jinja string literal for ``text``."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def chatml_template(image_placeholder: str | None = None, default_system: str | None = None) -> str:
    """A ChatML (``<|im_start|>role\\n...<|im_end|>\\n``) template accepting content parts.

    ``image_placeholder``: text emitted for each image part; ``None`` makes image parts an error
    (text-only models). ``default_system``: system prompt inserted when the conversation has none.
    """
    if image_placeholder is None:
        on_image = "{{ raise_exception('this model reads text only; remove the image parts') }}"
    else:
        on_image = "{{ " + _quote(image_placeholder) + " }}"
    system = ""
    if default_system:
        system = (
            "{%- if loop.first and message['role'] != 'system' -%}"
            "{{ " + _quote(f"<|im_start|>system\n{default_system}<|im_end|>\n") + " }}"
            "{%- endif -%}"
        )
    return (
        "{%- for message in messages -%}"
        + system
        + "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
        "{%- elif part['type'] == 'image' -%}" + on_image + ""
        "{%- else -%}{{ raise_exception('unsupported content part type: ' ~ part['type']) }}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )
