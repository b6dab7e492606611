"""Turn a LoRA train checkpoint (``checkpoints/step-K``) into a PEFT adapter folder, so that an
intermediate RL step can be scored with ``rmkit eval --adapter``.

    python bench/experiments/checkpoint_adapter.py STEP FINAL OUT [EVAL_CONFIG]

e.g. ``STEP`` = ``runs/dev/s100/rl/checkpoints/step-40``, ``FINAL`` = a finished adapter of the
same stage layout (``runs/dev/s100/sft/final`` while the RL stage still runs), ``OUT`` = the
adapter folder to write. With ``EVAL_CONFIG`` (an eval stage's ``config.json``, e.g.
``runs/dev/s100/eval-sft/config.json``), the adapter is then scored with those settings into
``OUT/eval`` and the accuracy printed.

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


def score(out: Path, eval_config: Path) -> float:
    import json

    from rmkit.eval import EvalConfig, run_eval

    spec = json.loads(eval_config.read_text())
    spec["judge"]["adapter"] = str(out)
    spec["output"] = str(out / "eval")
    metrics = run_eval(EvalConfig(**{k: v for k, v in spec.items() if k != "kind"}))
    print(f"{out}: accuracy {metrics['overall']}")
    return metrics["overall"]


if __name__ == "__main__":
    paths = [Path(a) for a in sys.argv[1:5]]
    main(*paths[:3])
    if len(paths) == 4:
        score(paths[2], paths[3])
