"""A small byte-level BPE tokenizer built offline, for the tiny test models.

The tokenizer is trained with the ``tokenizers`` library on a corpus generated here from fixed
word lists and a seeded ``random.Random``, so every build yields the same ``tokenizer.json``.
Being byte-level, it encodes any text (unseen characters fall back to byte tokens). It carries
ChatML special tokens and, for vision-language models, the image tokens their processors need.
"""

from __future__ import annotations

import random

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHATML_SPECIALS = [PAD, IM_START, IM_END]

QWEN_VL_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
IDEFICS3_SPECIALS = [
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
LLAVA_SPECIALS = ["<image>"]

DEFAULT_VOCAB_SIZE = 1024
_SEED = 20240601

_WORD_TEXT = """
the a an of to and in is it that for on with as was be by this are or from at not but have
has had which one two three four five six seven eight nine ten first second better worse
answer answers response responses image images picture photo question questions prompt user
assistant system model reward judge score scores candidate candidates compare comparison
reason reasoning think because therefore so if then else than more less most least good bad
correct wrong true false yes no helpful harmless honest accurate detailed clear concise safe
unsafe shows contains mentions describes caption red green blue yellow black white cat dog
bird car tree house sky water city street person people man woman child table chair book
sun moon left right top bottom small large many few number sum total value equal plus minus
times divided result step steps final write explain describe choose select option which what
why how when where who please thank you we they he she their our your my me
"""
_WORDS = _WORD_TEXT.split()

_TEMPLATES = [
    "{W} {w} {w} {w}.",
    "{W} {w} is {w} than {w} {w}.",
    "Which response is {w}? Response {n} is {w}.",
    "<think>{W} {w} {w} {w} {w}.</think><answer>{n}</answer>",
    "Answer {n} is better. Image {n} is better.",
    "What is {n} + {n}? The answer is {nn}.",
    "The {w} {w} {w} {w}, and the {w} {w} {w}.",
    '{{"role": "{w}", "content": "{W} {w} {w}."}}',
    "def {w}_{w}(x):\n    return x + {n}\n",
    "{W}: {w} {w}; {w} {w} ({nn}%).",
]


def tiny_corpus(n_lines: int = 3000) -> list[str]:
    """Deterministic training text for the tiny tokenizer (``n_lines`` short lines)."""
    rng = random.Random(_SEED)

    def fill(template: str) -> str:
        out = template
        while "{W}" in out or "{w}" in out or "{n}" in out or "{nn}" in out:
            out = out.replace("{W}", rng.choice(_WORDS).capitalize(), 1)
            out = out.replace("{w}", rng.choice(_WORDS), 1)
            out = out.replace("{nn}", str(rng.randrange(10, 1000)), 1)
            out = out.replace("{n}", str(rng.randrange(1, 10)), 1)
        return out

    lines = [fill(_TEMPLATES[i % len(_TEMPLATES)]) for i in range(n_lines)]
    lines.append(" ".join(sorted(set(_WORDS))))
    lines.append("0123456789 !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\n\t")
    return lines


def build_tiny_tokenizer(
    extra_specials: list[str] | None = None,
    chat_template: str | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
):
    """A ``PreTrainedTokenizerFast`` trained on :func:`tiny_corpus`.

    Special tokens: ``<|endoftext|>`` (id 0, padding), ``<|im_start|>`` (1), ``<|im_end|>`` (2,
    end of sequence), then ``extra_specials`` in order right after the BPE vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(CHATML_SPECIALS),
        show_progress=False,
    )
    core.train_from_iterator(tiny_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        bos_token=None,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    if extra_specials:
        tok.add_special_tokens({"additional_special_tokens": list(extra_specials)})
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok
