"""``kind: pipeline`` recipes: named stages in order, each an inline config of one kind.

::

    kind: pipeline
    vars: {base: tiny-llama}
    stages:
      build:                               # stage name -> DIR/build/
        kind: build-data
        sources: [{format: hh-rlhf, inputs: [data/hh]}]
      sft:
        kind: train
        stage: sft
        model: {spec: "${vars.base}"}
        data: {path: "${stages.build.output}/train.jsonl"}
        ...

Stage keys handled by the pipeline (everything else is the stage's own config): ``kind``,
``serve`` (local OpenAI-compatible servers started for the stage), ``launch`` (train stages:
run under ``accelerate launch``) and ``description``. The pipeline sets every stage's
``output`` to ``DIR/<stage>``.

References (``${...}``, see :mod:`rmkit.pipeline.interpolate`): ``${output}`` (the run folder),
``${stages.NAME.output}`` (an earlier stage's folder), ``${vars.NAME}`` (the recipe's ``vars``)
and, inside a stage with ``serve``, ``${serve.NAME.url}`` / ``${serve.NAME.model}``. A reference
to an unknown or a later stage is an error. Every stage is validated by its kind's config model
when the recipe is loaded, before anything runs.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from rmkit.config.validate import StrictModel, validate_config
from rmkit.errors import ConfigError
from rmkit.pipeline.interpolate import find_refs, substitute

# Stage kind -> its config model ("module:attribute", imported when needed).
STAGE_MODELS: dict[str, str] = {
    "build-data": "rmkit.data.config:BuildDataConfig",
    "caption": "rmkit.pipeline.data_stages:CaptionStageConfig",
    "mix": "rmkit.pipeline.data_stages:MixStageConfig",
    "distill": "rmkit.distill.config:DistillConfig",
    "train": "rmkit.training.config:TrainConfig",
    "eval": "rmkit.eval.config:EvalConfig",
    "report": "rmkit.pipeline.report:ReportStageConfig",
}
STAGE_KEYS = ("kind", "serve", "launch", "description")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
SERVE_ATTRS = ("url", "model")
REF_HELP = "${output}, ${stages.NAME.output}, ${vars.NAME} or ${serve.NAME.url|model}"


class ServeSpec(StrictModel):
    """A local model served over HTTP (``rmkit serve``) while its stage runs."""

    model: str = Field(description="built-in name, model folder or hub id")
    adapter: str | None = Field(None, description="PEFT adapter folder applied to `model`")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = Field(16, ge=1, description="most sequences generated in one batch")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    port: int = Field(0, ge=0, le=65535, description="0: a free port")


class LaunchSpec(StrictModel):
    """Run a train stage as ``accelerate launch --config_file CONFIG -m rmkit.pipeline.launch``."""

    accelerate_config: str = Field(
        description="an accelerate config file, e.g. recipes/accelerate/ddp.yaml"
    )
    num_processes: int | None = Field(None, ge=1, description="default: the config's num_processes")


@dataclass
class Stage:
    """One stage resolved for a run folder: references substituted, paths absolute, validated."""

    name: str
    kind: str
    index: int
    output: Path
    config: Any  # the kind's validated config model
    data: dict[str, Any]  # the same config as a plain dict, before validation (for launches)
    config_hash: str
    inputs: list[str] = field(default_factory=list)  # earlier stages it refers to
    serve: dict[str, ServeSpec] = field(default_factory=dict)
    launch: LaunchSpec | None = None
    description: str = ""


class PipelineConfig(StrictModel):
    kind: Literal["pipeline"] = "pipeline"
    description: str = ""
    output: str | None = Field(None, description="run folder (relative to the working directory)")
    vars: dict[str, Any] = Field(default_factory=dict, description="values for ${vars.NAME}")
    stages: dict[str, Any] = Field(min_length=1, description="name -> stage config, in order")
    recipe_dir: str | None = Field(None, description="the recipe's folder (set when loading)")

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        for name, body in self.stages.items():
            _check_stage_shape(name, body)
        refs = find_refs(self.vars)
        if refs:
            path, ref = refs[0]
            raise ConfigError(
                f"vars.{path}: references are not allowed in vars (found '${{{ref}}}')"
            )
        self.resolve(self.default_run_dir())  # validates every stage before anything runs
        return self

    @classmethod
    def resolve_paths(cls, data: dict[str, Any], base: Path) -> dict[str, Any]:
        """Remember the recipe's folder: each stage's relative paths are resolved against it."""
        return {**data, "recipe_dir": str(base)}

    @property
    def names(self) -> list[str]:
        return list(self.stages)

    def default_run_dir(self) -> Path:
        return Path(self.output or "runs/pipeline").expanduser().absolute()

    def resolve(self, run_dir: Path) -> list[Stage]:
        """Every stage resolved for ``run_dir`` (served models get placeholder URLs)."""
        return [self.resolve_stage(name, run_dir) for name in self.stages]

    def resolve_stage(
        self, name: str, run_dir: Path, serve_urls: dict[str, str] | None = None
    ) -> Stage:
        """Stage ``name`` for ``run_dir``; ``serve_urls`` maps its servers to their live URLs.

        The config hash always uses the placeholder ``serve://NAME``, so a server's port never
        changes it.
        """
        index = self.names.index(name)
        body = dict(self.stages[name])
        kind = body.pop("kind")
        base = Path(self.recipe_dir or ".").absolute()
        run_dir = Path(run_dir).absolute()
        plain = _Lookup(self, index, run_dir)
        serve = _serve_specs(name, body.pop("serve", None), plain, base)
        launch = _launch_spec(name, body.pop("launch", None), plain, base)
        description = str(body.pop("description", "") or "")
        data, config = self._validated(
            name, kind, body, plain.with_serve(serve, None), base, launch
        )
        raw = {k: v for k, v in self.stages[name].items() if k != "description"}
        used = {r.split(".")[1] for _, r in find_refs(raw) if r.startswith("stages.")}
        inputs = [n for n in self.names if n in used]
        digest = config_hash(kind, config, serve)
        if serve_urls is not None:
            live = plain.with_serve(serve, serve_urls)
            data, config = self._validated(name, kind, body, live, base, launch)
        return Stage(
            name, kind, index, run_dir / name, config, data, digest, inputs, serve, launch,
            description,
        )  # fmt: skip

    def _validated(self, name, kind, body, lookup, base, launch) -> tuple[dict, Any]:
        model = stage_model(kind)
        data = _substitute(name, body, lookup)
        data["output"] = str(lookup.run_dir / name)
        if hasattr(model, "resolve_paths"):
            data = model.resolve_paths(data, base)
        with _world_size(launch_processes(launch) if launch else None):
            config = validate_config(model, data, f"stage '{name}' ({kind})")
        return data, config


def _check_stage_shape(name: str, body: Any) -> None:
    if not NAME_RE.match(name):
        raise ConfigError(
            f"stage name '{name}' is not valid",
            hint="use letters, digits, '-' and '_' (it names the stage's folder)",
        )
    if not isinstance(body, dict):
        raise ConfigError(
            f"stage '{name}' must be a mapping with a kind, got {type(body).__name__}"
        )
    kind = body.get("kind")
    if kind not in STAGE_MODELS:
        close = difflib.get_close_matches(str(kind), list(STAGE_MODELS), n=1)
        raise ConfigError(
            f"stage '{name}': unknown kind {kind!r}"
            + (f"; did you mean '{close[0]}'?" if close else ""),
            hint="stage kinds: " + ", ".join(STAGE_MODELS),
        )
    if "output" in body:
        raise ConfigError(
            f"stage '{name}' sets 'output'",
            hint=f"remove it: the pipeline writes each stage into <run folder>/{name}",
        )
    if "launch" in body and kind != "train":
        raise ConfigError(f"stage '{name}': 'launch' applies to train stages only")


def stage_model(kind: str) -> type:
    module, _, attr = STAGE_MODELS[kind].partition(":")
    return getattr(importlib.import_module(module), attr)


class _Lookup:
    """Resolves one stage's references; knows the stage's position and its servers."""

    def __init__(self, cfg: PipelineConfig, index: int, run_dir: Path):
        self.cfg, self.index, self.run_dir = cfg, index, run_dir
        self.serve: dict[str, ServeSpec] | None = None
        self.urls: dict[str, str] | None = None

    def with_serve(self, serve: dict[str, ServeSpec], urls: dict[str, str] | None) -> _Lookup:
        other = _Lookup(self.cfg, self.index, self.run_dir)
        other.serve, other.urls = serve, urls
        return other

    def __call__(self, ref: str) -> Any:
        parts = ref.split(".")
        if ref == "output":
            return str(self.run_dir)
        if parts[0] == "stages":
            return self._stage(ref, parts)
        if parts[0] == "vars":
            return self._var(ref, parts)
        if parts[0] == "serve":
            return self._serve(ref, parts)
        raise ConfigError(f"unknown reference '${{{ref}}}'", hint="references: " + REF_HELP)

    def _stage(self, ref: str, parts: list[str]) -> str:
        names = self.cfg.names
        if len(parts) != 3 or parts[2] != "output":
            raise ConfigError(
                f"'${{{ref}}}': a stage reference is ${{stages.NAME.output}}",
                hint="add the file inside it as a path, e.g. ${stages.build.output}/train.jsonl",
            )
        target, me = parts[1], names[self.index]
        if target not in names:
            close = difflib.get_close_matches(target, names, n=1, cutoff=0.4)
            raise ConfigError(
                f"'${{{ref}}}': no stage named '{target}'"
                + (f"; did you mean '{close[0]}'?" if close else ""),
                hint="stages: " + ", ".join(names),
            )
        j = names.index(target)
        if j == self.index:
            raise ConfigError(
                f"'${{{ref}}}': stage '{me}' refers to its own output",
                hint="a stage writes into its own folder by itself; refer to earlier stages only",
            )
        if j > self.index:
            raise ConfigError(
                f"'${{{ref}}}': stage '{me}' refers to stage '{target}', which runs after it",
                hint="move the stage after the one it reads, or fix the name",
            )
        return str(self.run_dir / target)

    def _var(self, ref: str, parts: list[str]) -> Any:
        node: Any = self.cfg.vars
        for k, part in enumerate(parts[1:], 1):
            if not isinstance(node, dict) or part not in node:
                keys = list(node) if isinstance(node, dict) else []
                close = difflib.get_close_matches(part, keys, n=1, cutoff=0.4)
                where = ".".join(parts[:k])
                raise ConfigError(
                    f"'${{{ref}}}': {where} has no '{part}'"
                    + (f"; did you mean '{where}.{close[0]}'?" if close else ""),
                    hint=("defined there: " + ", ".join(keys)) if keys else "define it under vars:",
                )
            node = node[part]
        if len(parts) == 1:
            raise ConfigError("'${vars}': name the variable, e.g. ${vars.base_model}")
        return node

    def _serve(self, ref: str, parts: list[str]) -> str:
        me = self.cfg.names[self.index]
        if self.serve is None:
            raise ConfigError(
                f"'${{{ref}}}': servers can be referred to only in a stage's own config",
                hint="refer to a server in the stage that declares it under serve:",
            )
        if len(parts) != 3 or parts[2] not in SERVE_ATTRS:
            raise ConfigError(f"'${{{ref}}}': write ${{serve.NAME.url}} or ${{serve.NAME.model}}")
        name = parts[1]
        if name not in self.serve:
            close = difflib.get_close_matches(name, list(self.serve), n=1, cutoff=0.4)
            raise ConfigError(
                f"'${{{ref}}}': stage '{me}' serves no model named '{name}'"
                + (f"; did you mean '{close[0]}'?" if close else ""),
                hint="declare it: serve: {" + name + ": {model: ...}}",
            )
        if parts[2] == "model":
            return self.serve[name].model
        return self.urls[name] if self.urls is not None else f"serve://{name}"


def _substitute(stage: str, body: Any, lookup: _Lookup) -> Any:
    try:
        return substitute(body, lookup)
    except ConfigError as e:
        raise ConfigError(f"stage '{stage}': {e.message}", e.hint) from None


def _serve_specs(stage: str, raw: Any, lookup: _Lookup, base: Path) -> dict[str, ServeSpec]:
    if raw is None:
        return {}
    raw = _substitute(stage, raw, lookup)
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(
            f"stage '{stage}': serve must map server names to specs",
            hint="e.g. serve: {teacher: {model: tiny-llama}}, then ${serve.teacher.url}",
        )
    out = {}
    for name, spec in raw.items():
        if not NAME_RE.match(str(name)):
            raise ConfigError(f"stage '{stage}': serve name '{name}' is not valid")
        data = dict(spec)
        model = data.get("model")
        if isinstance(model, str) and (model.startswith(("./", "../")) or (base / model).is_dir()):
            data["model"] = str((base / model).resolve())
        adapter = data.get("adapter")
        if isinstance(adapter, str) and not Path(adapter).expanduser().is_absolute():
            data["adapter"] = str((base / adapter).resolve())
        out[name] = validate_config(ServeSpec, data, f"stage '{stage}': serve.{name}")
    return out


def _launch_spec(stage: str, raw: Any, lookup: _Lookup, base: Path) -> LaunchSpec | None:
    if raw is None:
        return None
    data = _substitute(stage, raw, lookup)
    spec = validate_config(LaunchSpec, data, f"stage '{stage}': launch")
    path = Path(spec.accelerate_config).expanduser()
    path = path if path.is_absolute() else (base / path).resolve()
    if not path.is_file():
        raise ConfigError(
            f"stage '{stage}': accelerate config not found: {path}",
            hint="see recipes/accelerate/ (ddp.yaml, deepspeed-zero2.yaml, deepspeed-zero3.yaml, fsdp.yaml)",
        )
    return spec.model_copy(update={"accelerate_config": str(path)})


def launch_processes(spec: LaunchSpec) -> int:
    """Processes a launch starts: ``num_processes``, else the accelerate config's."""
    if spec.num_processes is not None:
        return spec.num_processes
    from rmkit.config.loader import load_yaml

    data = load_yaml(
        Path(spec.accelerate_config).read_text(encoding="utf-8"), spec.accelerate_config
    )
    n = data.get("num_processes", 1) if isinstance(data, dict) else 1
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"{spec.accelerate_config}: num_processes must be a positive integer")
    return n


@contextlib.contextmanager
def _world_size(n: int | None):
    """Validate a launched train stage for its process count (batch splits depend on it)."""
    if n is None:
        yield
        return
    old = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = str(n)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("WORLD_SIZE", None)
        else:
            os.environ["WORLD_SIZE"] = old


def config_hash(kind: str, config: Any, serve: dict[str, ServeSpec]) -> str:
    """SHA-256 of the stage's validated config (defaults filled in) and its servers."""
    payload = {
        "kind": kind,
        "config": config.model_dump(mode="json"),
        "serve": {k: v.model_dump(mode="json") for k, v in sorted(serve.items())},
    }
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
