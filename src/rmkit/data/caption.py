"""Caption every image of a built dataset and write caption-substituted copies of its records.

Used for MSRL's stage 2: the same preference items with every image replaced by a text
description, so a text-only policy can be trained on multimodal data.

- Captions come from any generation backend (:func:`rmkit.generation.make_backend`): a local
  vision-language model or an OpenAI-compatible API (which brings bounded concurrency and
  retries). Decoding is greedy by default.
- The cache is an append-only JSONL file; each line holds one caption under a key that hashes
  the image's SHA-256, the model id, the prompt and the decoding settings. A line is written
  with one ``write`` on an ``O_APPEND`` descriptor as soon as its chunk of images returns, so
  an interrupted run (Ctrl-C, SIGKILL) loses at most the chunk in flight (``chunk_size``
  images: by default 4 x the API concurrency, or the local batch size) and a rerun captions only
  the images without a cache line.
- The substituted copy of a record (:func:`substitute`) has no image references: image parts
  of the prompt become ``{"type": "caption", "text": ...}`` parts (images listed only in
  ``images`` are put as caption parts before the first user text), ``images`` is empty, and
  the candidates of generation tasks become caption blocks ``"[Image description: ...]"``. The
  ``captions`` map (image reference in the source dataset -> caption) is kept, the id gets the
  suffix ``#caption`` and ``meta`` gains ``caption_substituted: true``, ``image_record_id``
  (the original id) and ``caption_model``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rmkit import __version__
from rmkit.data.caption_cache import (  # noqa: F401  (re-exported)
    DEFAULT_PROMPT,
    SPLITS,
    CaptionCache,
    CaptionSettings,
    caption_key,
)
from rmkit.data.images import STORED_NAME, confine_record_images, record_image_refs
from rmkit.data.records import read_records, record_problem
from rmkit.errors import RmkitError
from rmkit.utils.console import Progress
from rmkit.utils.io import (
    HashingWriter,
    atomic_open,
    dumps_line,
    file_sha256,
    read_json,
    write_json_atomic,
)

log = logging.getLogger(__name__)

CACHE_FILE = "caption_cache.jsonl"
ID_SUFFIX = "#caption"


def image_sha(dataset: Path, ref: str) -> str:
    """The SHA-256 of a dataset image: from its content-addressed name, else by hashing it."""
    m = STORED_NAME.match(ref)
    path = dataset / ref
    if not path.is_file():
        raise RmkitError(
            f"{dataset}: image {ref} is missing", hint="rebuild the dataset with rmkit build-data"
        )
    return m.group(2) if m else file_sha256(path)


def _split_files(dataset: Path, splits: tuple[str, ...]) -> list[tuple[str, Path]]:
    from rmkit.data.manifest import verify_manifest

    found = [(s, dataset / f"{s}.jsonl") for s in splits if (dataset / f"{s}.jsonl").is_file()]
    # a complete build whose split files match its manifest (SECURITY-REVIEW L3)
    verify_manifest(dataset, [f.name for _, f in found])
    return found


def collect_images(dataset: Path, splits: tuple[str, ...] = SPLITS) -> dict[str, str]:
    """Every image reference in the dataset's splits (first-seen order) -> its SHA-256.

    Every reference must stay inside the dataset folder (the build-data rule,
    :func:`rmkit.data.images.resolve_in_roots`), so no file from elsewhere is sent to the
    captioner; an error names the file, line, record and path.
    """
    from rmkit.errors import DataError
    from rmkit.utils.io import iter_jsonl

    refs: dict[str, str] = {}
    for _, path in _split_files(dataset, splits):
        for lineno, rec in iter_jsonl(path):
            problem = record_problem(rec)
            if problem:
                raise DataError(str(path), lineno, problem[0], f"expected {problem[1]}")
            confine_record_images(rec, [dataset], f"{path}:{lineno}")
            for ref in record_image_refs(rec):
                if ref not in refs:
                    refs[ref] = image_sha(dataset, ref)
    return refs


def substitute(rec: dict[str, Any], captions: dict[str, str], model: str) -> dict[str, Any] | None:
    """The caption-substituted copy of ``rec`` (see the module docstring); None without images."""
    from rmkit.prompts.render import caption_block

    refs = record_image_refs(rec)
    if not refs:
        return None
    missing = [r for r in refs if r not in captions]
    if missing:
        raise RmkitError(f"record {rec.get('id')}: no caption for {missing[0]}")
    inline: set[str] = set()
    prompt = rec["prompt"]
    msgs = (
        [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        if isinstance(prompt, str)
        else []
    )
    for m in prompt if isinstance(prompt, list) else []:
        content = m["content"]
        if isinstance(content, list):
            content = [_caption_part(p, captions, inline) for p in content]
        msgs.append({**m, "content": content})
    loose = [r for r in rec.get("images") or [] if r not in inline]
    if loose:
        first = next((m for m in msgs if m["role"] == "user"), msgs[0])
        body = (
            first["content"]
            if isinstance(first["content"], list)
            else [{"type": "text", "text": first["content"]}]
        )
        first["content"] = [{"type": "caption", "text": captions[r]} for r in loose] + body
    elif isinstance(prompt, str):
        msgs = prompt  # type: ignore[assignment]  # a plain prompt with no image stays a string
    cands = rec["candidates"]
    if rec["task"] in ("image_generation", "video_generation"):
        cands = [caption_block(captions[c]) for c in cands]
    out = {
        "id": rec["id"] + ID_SUFFIX,
        "source": rec["source"],
        "task": rec["task"],
        "prompt": msgs,
        "images": [],
        "candidates": list(cands),
        "label": rec["label"],
        "label_kind": rec.get("label_kind", "preferred"),
        **({"cluster": rec["cluster"]} if rec.get("cluster") is not None else {}),
        "captions": {r: captions[r] for r in refs},
        "meta": {
            **(rec.get("meta") or {}),
            "caption_substituted": True,
            "image_record_id": rec["id"],
            "caption_model": model,
        },
    }
    problem = record_problem(out)
    if problem:
        raise RmkitError(
            f"record {rec['id']}: caption-substituted copy is invalid: {problem[0]}: expected {problem[1]}"
        )
    return out


def _caption_part(
    part: dict[str, Any], captions: dict[str, str], inline: set[str]
) -> dict[str, Any]:
    if part.get("type") != "image":
        return dict(part)
    inline.add(part["image"])
    return {"type": "caption", "text": captions[part["image"]]}


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_captions(
    dataset: Path,
    refs: dict[str, str],
    backend: Any,
    model: str,
    settings: CaptionSettings,
    cache: CaptionCache,
) -> dict[str, int]:
    """Caption the images that have no cache entry yet; return counts."""
    from rmkit.generation.base import SamplingParams

    pending: dict[str, tuple[str, str]] = {}
    for ref, sha in refs.items():
        key = caption_key(sha, model, settings)
        if key not in cache and key not in pending:
            pending[key] = (ref, sha)
    counts = {
        "images": len(refs),
        "from_cache": len(refs) - len(pending),
        "captioned": 0,
        "empty": 0,
    }
    if not pending:
        return counts
    params = SamplingParams(
        n=1,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        top_k=settings.top_k,
        repetition_penalty=settings.repetition_penalty,
    )
    log.info(
        "captioning %d image(s) with %s (%d already cached)",
        len(pending),
        model,
        counts["from_cache"],
    )
    with Progress("caption", total=len(pending), unit="images") as prog:
        for chunk in _chunks(list(pending.items()), max(1, settings.chunk_size)):
            convs = [
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "image": str((dataset / ref).resolve())},
                            {"type": "text", "text": settings.prompt},
                        ],
                    }
                ]
                for _, (ref, _) in chunk
            ]
            outs = backend.generate(convs, params)
            failed = [
                ref
                for (_, (ref, _)), comps in zip(chunk, outs, strict=True)
                if comps[0].finish_reason == "error"
            ]
            for (key, (_, sha)), comps in zip(chunk, outs, strict=True):
                if comps[0].finish_reason == "error":
                    continue
                text = comps[0].text.strip()
                counts["empty"] += not text
                cache.put(key, sha, model, text)
                counts["captioned"] += 1
            prog.update(len(chunk), done=counts["captioned"])
            if failed:
                raise RmkitError(
                    f"{len(failed)} image(s) got no caption (first: {failed[0]})",
                    hint="captions made so far are cached; rerun to retry the rest",
                )
    if counts["empty"]:
        log.warning("%d caption(s) came back empty", counts["empty"])
    return counts


CAPTION_FILES = frozenset(
    {*(f"{s}.jsonl" for s in SPLITS), "captions.jsonl", "manifest.json", CACHE_FILE}
)


def caption_dataset(
    dataset: str | Path,
    output: str | Path,
    backend: Any,
    model: str,
    settings: CaptionSettings | None = None,
    cache_path: str | Path | None = None,
) -> dict[str, Any]:
    """Caption ``dataset``'s images (cached) and write substituted splits to ``output``.

    ``model`` is the id that keys the cache (e.g. ``api:gpt-4o-mini`` or ``local:tiny-qwen2.5-vl``).
    Returns the manifest, also written to ``output/manifest.json``. The output folder is
    written as a whole (:mod:`rmkit.data.staging`): a failed or killed run leaves the previous
    content as it was; the default cache (``output/caption_cache.jsonl``) is kept either way.
    """
    from rmkit.data.staging import check_foreign, check_output_vs_inputs
    from rmkit.utils.lock import lock_output

    settings = settings or CaptionSettings()
    src, out = Path(dataset), Path(output)
    unknown = [s for s in settings.splits if s not in SPLITS]
    if unknown:
        raise RmkitError(f"unknown split '{unknown[0]}'", hint="splits are train, val, test")
    check_output_vs_inputs(out, [src])
    check_foreign(out, CAPTION_FILES, "rmkit build-data caption")
    with lock_output(out, what="caption output"):
        return _caption_locked(src, out.resolve(), backend, model, settings, cache_path)


def _caption_locked(
    src: Path,
    out: Path,
    backend: Any,
    model: str,
    settings: CaptionSettings,
    cache_path: str | Path | None,
) -> dict[str, Any]:
    from rmkit.data.staging import staged

    files = _split_files(src, settings.splits)
    refs = collect_images(src, settings.splits)
    cache = CaptionCache(cache_path or out / CACHE_FILE)
    try:
        counts = run_captions(src, refs, backend, model, settings, cache)
        captions = {
            ref: cache.captions[caption_key(sha, model, settings)] for ref, sha in refs.items()
        }
    finally:
        cache.close()
    with staged(out, keep=[CACHE_FILE]) as stage:
        outputs, per_split = {}, {}
        for split in SPLITS:
            path = dict(files).get(split)
            written, skipped, sha = _write_split(
                path, stage / f"{split}.jsonl", captions, model, settings.keep_text
            )
            outputs[f"{split}.jsonl"] = {"records": written, "sha256": sha}
            per_split[split] = {"records": written, "without_images": skipped}
        with atomic_open(stage / "captions.jsonl", "wb") as fh:
            for ref, sha in sorted(refs.items()):
                fh.write(dumps_line({"image": ref, "sha256": sha, "caption": captions[ref]}))
        manifest = {
            "rmkit_version": __version__,
            "kind": "captions",
            "source": str(src),
            "source_manifest": read_json(src / "manifest.json").get("outputs", {}),
            "model": model,
            "settings": {k: v for k, v in asdict(settings).items() if k not in ("chunk_size",)},
            "images": counts,
            "counts": per_split,
            "cache": str(cache.path),
            "outputs": outputs,
        }
        write_json_atomic(stage / "manifest.json", manifest)
    log.info("wrote %s: %s", out, {s: c["records"] for s, c in per_split.items()})
    return manifest


def _write_split(
    path: Path | None, target: Path, captions: dict[str, str], model: str, keep_text: bool
) -> tuple[int, int, str]:
    skipped = 0
    with atomic_open(target, "wb") as fh:
        out = HashingWriter(fh)
        for rec in read_records(path) if path is not None else ():
            new = substitute(rec, captions, model)
            if new is None:
                skipped += 1
                if not keep_text:
                    continue
                new = {
                    **rec,
                    "id": rec["id"] + ID_SUFFIX,
                    "meta": {
                        **rec.get("meta", {}),
                        "caption_substituted": False,
                        "image_record_id": rec["id"],
                    },
                }
            out.write(dumps_line(new))
    return out.n, skipped, out.sha.hexdigest()
