"""Turn a LoRA train checkpoint (``checkpoints/step-K``) into a PEFT adapter folder, so that an
intermediate RL step can be scored with ``rmkit eval --adapter``.

    python bench/experiments/checkpoint_adapter.py RUN/rl/checkpoints/step-40 RUN/rl/final OUT

``final`` (the finished stage's adapter) supplies ``adapter_config.json`` and the tokenizer
files; the weights come from the checkpoint's ``trainable.safetensors`` (single-process
layout), renamed to PEFT's adapter keys. Converting the last checkpoint reproduces ``final``'s
weights exactly (checked by this script when the step is the last one).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def main(step: Path, final: Path, out: Path) -> None:
    weights = load_file(str(step / "trainable.safetensors"))
    renamed = {k.replace(".default.", "."): v for k, v in weights.items()}
    reference = load_file(str(final / "adapter_model.safetensors"))
    if set(renamed) != set(reference):
        missing = sorted(set(reference) ^ set(renamed))[:3]
        raise SystemExit(f"{step}: parameter names do not match {final} (e.g. {missing})")
    out.mkdir(parents=True, exist_ok=True)
    for f in final.iterdir():
        if f.name != "adapter_model.safetensors":
            shutil.copy(f, out / f.name)
    save_file(renamed, str(out / "adapter_model.safetensors"))
    same = all(bool((renamed[k] == reference[k]).all()) for k in reference)
    print(f"{out}: {len(renamed)} tensors; identical to {final}: {same}")


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:4]))
