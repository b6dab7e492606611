"""``rmkit build-data``: convert preference sources into unified record splits.

``rmkit build-data [RECIPE] --format NAME --input PATH --output DIR`` builds a dataset;
``rmkit build-data caption DIR ...`` captions its images and ``rmkit build-data mix ...`` mixes
record sets. ``build-data`` is a typer group whose class sends any arguments that do not start
with a subcommand name to the build command (so the build keeps its positional recipe and
overrides, and its own ``--help``). A recipe file literally named ``caption`` or ``mix`` must be
given as ``./caption``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from rmkit.cli.common import dry_run_option, out_console, overrides_argument, print_config


class BuildDataGroup(TyperGroup):
    """``build-data``: subcommands by name, anything else goes to the build command itself."""

    build_app: typer.Typer  # set by register(): a one-command app holding build_data_cmd

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        if args and args[0] in self.commands:
            return super().make_context(info_name, args, parent=parent, **extra)
        build = typer.main.get_command(self.build_app)
        return build.make_context(info_name, list(args), parent=parent, **extra)


def register(app: typer.Typer) -> None:
    build_app = typer.Typer(add_completion=False, rich_markup_mode="rich")
    build_app.command("build-data", no_args_is_help=True)(build_data_cmd)
    group = typer.Typer(
        cls=type("BuildDataGroup", (BuildDataGroup,), {"build_app": build_app}),
        rich_markup_mode="rich",
        help="Convert preference data into unified records (subcommands: caption, mix).",
    )
    group.command("caption", no_args_is_help=True)(caption_cmd)
    group.command("mix", no_args_is_help=True)(mix_cmd)
    app.add_typer(group, name="build-data")


def build_data_cmd(
    recipe: Path = typer.Argument(
        None,
        help="A `kind: build-data` recipe (optional when --format/--input are given).",
        show_default=False,
    ),
    overrides: list[str] = overrides_argument("seed=3 splits.train=0.8"),
    fmt: str = typer.Option(
        None,
        "--format",
        "-f",
        help="Converter for the --input files (see `rmkit build-data --list-formats`).",
    ),
    inputs: list[str] = typer.Option(
        None, "--input", "-i", help="Input file/folder/hub id; repeat for several."
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="Output folder (train/val/test.jsonl, manifest.json)."
    ),
    seed: int = typer.Option(None, "--seed", help="Seed for position balancing and sampling."),
    on_error: str = typer.Option(
        None,
        "--on-error",
        help="fail (default): stop at the first bad row; skip: list bad rows in rejects.jsonl.",
    ),
    columns: list[str] = typer.Option(
        None,
        "--column",
        help="For formats with a column mapping (pairs, image-pairs, sharegpt, ...): ours=theirs, e.g. prompt=question.",
    ),
    options: list[str] = typer.Option(
        None,
        "--option",
        help="Converter option name=value (value read as YAML), e.g. drop_ties=true; repeatable.",
    ),
    image_roots: list[Path] = typer.Option(
        None,
        "--image-root",
        help="Folder image paths may point into; repeatable (default: each input's own folder).",
    ),
    list_formats: bool = typer.Option(
        False, "--list-formats", help="List the converters and exit."
    ),
    dry_run: bool = dry_run_option(),
) -> None:
    """Convert preference data into unified records: balanced, deduplicated, split by prompt.

    Subcommands: [bold]rmkit build-data caption DIR --output OUT[/] (caption the images of a built dataset) and [bold]rmkit build-data mix --part PATH=WEIGHT ... --output OUT[/] (mix record sets).
    """
    if list_formats:
        from rmkit.data.sources import CONVERTERS

        for name, spec in CONVERTERS.items():
            print(f"{name:16s} {spec.description}")
        return
    from rmkit.config.kinds import load_config
    from rmkit.errors import ConfigError

    # A first positional that looks like an override is an override, not a recipe.
    if recipe is not None and "=" in str(recipe) and not Path(recipe).exists():
        overrides = [str(recipe), *(overrides or [])]
        recipe = None
    base: dict = {}
    if inputs:
        if not fmt:
            raise ConfigError(
                "--input needs --format", hint="e.g. --format hh-rlhf (see --list-formats)"
            )
        opts = _options(options or [])
        if columns:
            opts["columns"] = dict(_kv(c) for c in columns)
        base["sources"] = [
            {"format": fmt, "inputs": list(inputs), **({"options": opts} if opts else {})}
        ]
    elif fmt or columns or options:
        raise ConfigError("--format/--column/--option need --input")
    if image_roots:  # an override (not a base value) so a recipe's other images: settings stay
        import json

        roots = [str(Path(r).expanduser().resolve()) for r in image_roots]
        overrides = [*(overrides or []), f"images.roots={json.dumps(roots)}"]
    if recipe is None and not inputs:
        raise ConfigError(
            "nothing to build", hint="give a recipe, or --format NAME --input PATH --output DIR"
        )
    for key, value in (
        ("seed", seed),
        ("on_error", on_error),
        ("output", str(output) if output else None),
    ):
        if value is not None:
            base[key] = value
    cfg = load_config(recipe, overrides, kind="build-data", base=base)
    if dry_run:
        print_config(cfg)
        return
    if not cfg.output:
        raise ConfigError("no output folder", hint="pass --output DIR")
    from rmkit.data.build import build_data

    manifest = build_data(cfg)
    _summary(manifest, cfg.output)


def _options(items: list[str]) -> dict:
    from rmkit.config.loader import load_yaml
    from rmkit.errors import ConfigError

    out = {}
    for text in items:
        if "=" not in text:
            raise ConfigError(
                f"--option '{text}' is not name=value", hint="e.g. --option drop_ties=true"
            )
        key, _, raw = text.partition("=")
        out[key.strip()] = load_yaml(raw, f"--option {key}") if raw.strip() else ""
    return out


def _kv(text: str) -> tuple[str, str]:
    from rmkit.errors import ConfigError

    if "=" not in text:
        raise ConfigError(
            f"--column '{text}' is not ours=theirs", hint="e.g. --column prompt=question"
        )
    a, _, b = text.partition("=")
    return a.strip(), b.strip()


def _summary(manifest: dict, output: str) -> None:
    from rich.table import Table

    t = Table(title=f"rmkit build-data -> {output}")
    t.add_column("source")
    for s in ("train", "val", "test"):
        t.add_column(s, justify="right")
    for src, c in manifest["counts"]["by_source"].items():
        t.add_row(src, *(str(c[s]) for s in ("train", "val", "test")))
    tot = manifest["counts"]["total"]
    t.add_row("[bold]total", *(f"[bold]{tot[s]}" for s in ("train", "val", "test")))
    con = out_console()
    con.print(t)
    dropped = manifest["counts"]["dropped"]
    if dropped:  # named filters (empty_answer, duplicate, short candidate, ...) and their counts
        d = Table(title="rows dropped by filters")
        d.add_column("filter")
        d.add_column("rows", justify="right")
        for k, v in dropped.items():
            d.add_row(k, str(v))
        con.print(d)
    if manifest.get("images"):
        im = manifest["images"]
        con.print(f"images: {im['files']} file(s), {im['bytes'] / 1e6:.1f} MB in {output}/images")
    if dropped or manifest["counts"]["rejected_rows"]:
        con.print(
            "dropped: "
            + ", ".join(f"{k} {v}" for k, v in dropped.items())
            + f"; rejects listed in {output}/rejects.jsonl"
        )
    pf = manifest["preferred_first_fraction"]["all"]
    if pf is not None:
        con.print(f"preferred candidate shown first: {pf:.1%}")


def caption_cmd(
    dataset: Path = typer.Argument(..., help="A built dataset folder (rmkit build-data output)."),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Folder for the caption-substituted splits."
    ),
    model: str = typer.Option(
        None, "--model", "-m", help="Local vision-language model: built-in name, folder or hub id."
    ),
    base_url: str = typer.Option(
        None, "--base-url", help="OpenAI-compatible API base URL (instead of --model)."
    ),
    api_model: str = typer.Option(None, "--api-model", help="The API's model name."),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key."
    ),
    prompt: str = typer.Option(
        None, "--prompt", help="Captioning instruction (default: a detailed-description prompt)."
    ),
    prompt_file: Path = typer.Option(
        None, "--prompt-file", help="Read the captioning instruction from a file."
    ),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    top_k: int = typer.Option(0, "--top-k", min=0, help="Top-k sampling (0 = off)."),
    repetition_penalty: float = typer.Option(
        1.0, "--repetition-penalty", help="Above 0; 1.0 = off."
    ),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="API requests in flight."),
    max_retries: int = typer.Option(8, "--max-retries", min=0),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per API request."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Local model batch size."),
    adapter: str = typer.Option(
        None, "--adapter", help="PEFT adapter folder applied to the local --model."
    ),
    device: str = typer.Option("auto", "--device", help="Local model device: auto, cpu or cuda."),
    dtype: str = typer.Option(
        "float32", "--dtype", help="Local model dtype (float32, bfloat16, float16)."
    ),
    chunk_size: int = typer.Option(
        None,
        "--chunk-size",
        min=1,
        help="Images per generate call; the cache is written after each (default: 4 x concurrency for an API, the batch size locally).",
    ),
    cache: Path = typer.Option(
        None, "--cache", help="Caption cache file (default OUTPUT/caption_cache.jsonl)."
    ),
    splits: list[str] = typer.Option(
        None, "--split", help="Splits to process (default train, val, test)."
    ),
    keep_text: bool = typer.Option(False, "--keep-text", help="Also copy records without images."),
) -> None:
    """Caption every image of a built dataset; write caption-substituted copies of its records."""
    from rmkit.config import validate_config
    from rmkit.data.caption import CaptionSettings, caption_dataset
    from rmkit.errors import ConfigError
    from rmkit.generation.config import BackendConfig

    if not model and not base_url:
        raise ConfigError(
            "give exactly one of --model (local) or --base-url (API)",
            hint="e.g. --model tiny-qwen2.5-vl, or --base-url URL --api-model NAME",
        )
    given = {
        "model": model, "adapter": adapter, "dtype": dtype, "batch_size": batch_size,
        "device": device, "base_url": base_url, "api_model": api_model,
        "api_key_env": api_key_env, "concurrency": concurrency, "max_retries": max_retries,
        "timeout": timeout,
    }  # fmt: skip
    try:
        captioner = validate_config(
            BackendConfig, {k: v for k, v in given.items() if v is not None}, "options"
        )
    except ConfigError as e:
        e.hint = e.hint or "each key is the option of that name (base_url is --base-url)"
        raise
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise ConfigError(f"prompt file not found: {prompt_file}")
        prompt = prompt_file.read_text(encoding="utf-8").strip()
    settings = CaptionSettings(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        splits=tuple(splits or ("train", "val", "test")),
        keep_text=keep_text,
    )
    if prompt:
        settings.prompt = prompt
    model_id = ("api:" if captioner.is_api else "local:") + captioner.name
    settings.chunk_size = chunk_size or (4 * concurrency if captioner.is_api else batch_size)
    backend = captioner.build()
    try:
        manifest = caption_dataset(dataset, output, backend, model_id, settings, cache)
    finally:
        backend.close()
    im, counts = manifest["images"], manifest["counts"]
    out_console().print(
        f"captions: {im['images']} image(s), {im['captioned']} new, {im['from_cache']} from the cache; "
        + ", ".join(f"{s} {c['records']}" for s, c in counts.items())
        + f" record(s) in {output}"
    )


def mix_cmd(
    parts: list[str] = typer.Option(
        ...,
        "--part",
        "-p",
        help="PATH=NUMBER: a dataset folder (or .jsonl file) and its weight (count with --by count); repeat.",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder."),
    seed: int = typer.Option(0, "--seed", help="Seed for the sample and the interleaving."),
    by: str = typer.Option(
        "ratio", "--by", help="ratio: numbers are weights; count: numbers are record counts."
    ),
    total: int = typer.Option(
        None,
        "--total",
        min=1,
        help="With --by ratio: records per split (default: the largest exact mix).",
    ),
    splits: list[str] = typer.Option(
        None,
        "--split",
        help="Splits to mix (default: all three for a plain ratio mix, else train).",
    ),
    repeat: bool = typer.Option(
        False, "--repeat", help="Reuse records of a part that has fewer than asked for."
    ),
) -> None:
    """Mix record sets with given ratios (or counts) and a seed, e.g. 4 caption : 1 text."""
    from rmkit.data.mix import mix_datasets, parse_part

    manifest = mix_datasets(
        [parse_part(p) for p in parts],
        output,
        seed=seed,
        by=by,
        total=total,
        splits=splits,
        repeat=repeat,
    )
    con = out_console()
    for part in manifest["parts"]:
        con.print(f"{part['path']}: " + ", ".join(f"{s} {n}" for s, n in part["taken"].items()))
    con.print(
        "total: "
        + ", ".join(
            f"{k.removesuffix('.jsonl')} {v['records']}" for k, v in manifest["outputs"].items()
        )
        + f" -> {output}"
    )
