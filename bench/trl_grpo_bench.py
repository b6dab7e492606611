"""Time TRL's GRPOTrainer on the same model and settings as ``bench/train_bench.py``.

Runs in a separate virtual environment that has TRL installed (TRL is not an rmkit
dependency); ``bench/train_bench.py`` starts it as a subprocess and reads one JSON line from
stdout::

    {"trl": "1.16.0", "threads": 2, "dtype": "bfloat16", "bf16_autocast": false,
     "step_s": [...], "generate_s": [...], "prepare_s": [...],
     "prompt_tokens": [...], "completion_tokens": [...]}

per step: ``generate_s`` is ``model.generate`` (TRL's ``_generate``), ``prepare_s`` the whole
rollout phase (generation, rewards, advantages: ``_generate_and_score_completions``), the rest of
``step_s`` is the loss forward/backward and optimizer step; token counts are summed over the
step's sequences (prompt tokens counted once per completion, as TRL runs them).

    TRL_PYTHON bench/trl_grpo_bench.py --model DIR --prompt-json FILE [--steps 3]
        [--dtype float32|bfloat16] [--bf16] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a save_pretrained model folder")
    ap.add_argument(
        "--prompt-json", required=True, help="a JSON file holding one chat conversation"
    )
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--completions", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=1, help="prompts per step")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (TRL's default)")
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="dtype the model is loaded in (GRPOConfig.model_init_kwargs; TRL's default float32)",
    )
    args = ap.parse_args()

    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.prompt_json) as fh:
        loaded = json.load(fh)
    # one conversation, or a list of them (used in turn)
    convs = loaded if loaded and isinstance(loaded[0], list) else [loaded]
    rows = [{"prompt": convs[i % len(convs)]} for i in range(args.prompts * (args.steps + 1))]
    data = Dataset.from_list(rows)

    def length_reward(completions, **kwargs):
        return [float(len(c[0]["content"]) % 7) for c in completions]

    times: list[float] = []
    tokens: list[float] = []
    gen_s: list[float] = []
    prep_s: list[float] = []
    prompt_toks: list[int] = []
    comp_toks: list[int] = []

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer with the rollout phase and its ``generate`` timed (nothing else changed)."""

        def _generate(self, prompts):
            t = time.perf_counter()
            out = super()._generate(prompts)
            gen_s.append(time.perf_counter() - t)
            return out

        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            prep_s.append(time.perf_counter() - t)
            prompt_toks.append(int(out["prompt_mask"].sum()))
            comp_toks.append(int(out["completion_mask"].sum()))
            return out

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                tokens.append(logs["completions/mean_length"] * args.completions)

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=args.completions * args.prompts,
            num_generations=args.completions,
            max_completion_length=args.max_new_tokens,
            temperature=args.temperature,
            beta=0.0,
            learning_rate=1e-5,
            gradient_accumulation_steps=1,
            gradient_checkpointing=False,
            max_steps=args.steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            bf16=args.bf16,
            model_init_kwargs={"dtype": args.dtype},
            seed=0,
            dataloader_num_workers=0,
        )
        lora = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        trainer = TimedGRPOTrainer(
            model=args.model,
            reward_funcs=length_reward,
            args=config,
            train_dataset=data,
            peft_config=lora,
            callbacks=[Timer()],
        )
        trainer.train()
        model_dtype = sorted({str(p.dtype) for p in trainer.model.parameters()})
    result = {
        "trl": trl.__version__, "threads": torch.get_num_threads(), "dtype": args.dtype,
        "bf16_autocast": args.bf16, "model_param_dtype": model_dtype, "step_s": times,
        "generate_s": gen_s, "prepare_s": prep_s, "prompt_tokens": prompt_toks,
        "completion_tokens": comp_toks, "logged_completion_tokens": tokens,
    }  # fmt: skip
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
