"""Run ``rmkit distill``: sample traces, judge them, append the results resumably.

The loop: load the records (and, for CMKD, pair each caption record with its image record),
skip those the done-log lists, and send the rest to the generation backend. An API teacher
gets one stream of records (``OpenAIBackend.generate_iter``): prompts are rendered as the
backend has room for more requests, so ``concurrency`` requests stay in flight all the time,
and each record is finished the moment its ``n`` samples are in - no barrier per chunk. A local
model gets a chunk of records per ``generate`` call (``chunk_records`` records, ``n`` samples
each). Each record's samples are parsed and filtered (:mod:`rmkit.distill.outcome`, with the
rules of :mod:`rmkit.distill.select`), optionally checked for consistency (one batched judge
call per ``chunk_records`` records), turned into output lines (:mod:`rmkit.distill.outcome`,
:mod:`rmkit.distill.outputs`) and committed record by record
(:class:`rmkit.distill.state.RunState`: output lines flushed, then the done line). Files are
fsynced and the backend's usage logged every ``chunk_records`` records; ``summary.json`` is
written at the end, and also when a run stops on an error.

Attempts (``sampling.attempts`` = N > 1): the records go through up to N rounds. Round k sends
every record that no earlier attempt gave a kept trace (after every filter, consistency
included); a record is committed as soon as an attempt keeps a trace, or after attempt N, with
the samples of all its attempts and its attempt label (:func:`rmkit.distill.outcome.attempt_info`).
Attempt k's request seeds start at ``seed + (k - 1) * samples`` (the seeds one draw of ``N *
samples`` samples would use), and an API teacher caches attempt k >= 2 in a cache of its own
(``cache/attempt-k/``): a greedy request's cache key ignores the seed, so without it attempt 2
would be answered from attempt 1's entry instead of asking the teacher again. A resumed run gets
every attempt already answered from these caches, so none is paid twice.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rmkit.data.images import IMAGE_ROOTS_FILE
from rmkit.data.staging import check_output_vs_inputs
from rmkit.distill import select as S
from rmkit.distill.config import DistillConfig
from rmkit.distill.inputs import input_file
from rmkit.distill.outcome import Outcome, judge_item, record_lines
from rmkit.distill.outputs import Item
from rmkit.distill.prepare import (
    check_templates,
    filter_consistency,
    fingerprint,
    load_items,
    make_generator,
)
from rmkit.distill.state import SUMMARY_FILE, RunState
from rmkit.distill.summary import (
    UsageTracker,
    build_summary,
    estimate_cost,
    token_summary,
    usage_delta,
    usage_snapshot,
)
from rmkit.errors import RmkitError
from rmkit.utils.io import write_json_atomic

log = logging.getLogger(__name__)


class Distiller:
    """One distill run over ``cfg`` (``backend``/``judge_backend`` may be passed in, e.g. an
    already loaded local model; they are then not closed here)."""

    def __init__(
        self,
        cfg: DistillConfig,
        *,
        backend: Any = None,
        judge_backend: Any = None,
        restart: bool = False,
    ):
        from rmkit.prompts import get_template

        self.cfg = cfg
        self.out = Path(cfg.output)
        self.restart = restart
        self.tpl = get_template(cfg.template)
        self.image_tpl = get_template(cfg.cmkd.image_template) if cfg.mode == "cmkd" else None
        self.strict = cfg.filters.format == "strict"
        self.require_format = cfg.filters.format != "off"
        self._backend, self._own_backend = backend, backend is None
        self._judge, self._own_judge = judge_backend, judge_backend is None
        self.src_file = input_file(cfg.input, cfg.split)
        self.image_root = Path(cfg.image_root) if cfg.image_root else self.src_file.parent
        self.cmkd_root: Path | None = None
        check_templates(self.tpl, self.image_tpl)

    # ------------------------------------------------------------------ setup

    def sampling_params(self, chunk: list[Item], attempt: int = 1) -> Any:
        from rmkit.generation import SamplingParams

        s = self.cfg.sampling
        ranks = s.logprobs and (
            self.cfg.mode == "cmkd"
            or (self.cfg.mode == "rejection-sampling" and self.cfg.rejection.keep == "one")
        )
        # attempt k: the seeds after those of attempts 1..k-1 (sent as seed + sample index)
        seed = self.cfg.seed + (attempt - 1) * s.samples
        if not self.cfg.teacher.is_api:  # no request cache: a fresh seed per chunk
            tag = f"{self.cfg.seed}:{chunk[0].id}" + (f":attempt-{attempt}" if attempt > 1 else "")
            digest = hashlib.sha256(tag.encode()).digest()
            seed = int.from_bytes(digest[:4], "big")
        return SamplingParams(
            n=s.samples,
            temperature=s.temperature,
            top_p=s.top_p,
            max_new_tokens=s.max_new_tokens,
            seed=seed,
            logprobs=ranks,
            top_k=s.top_k,
            repetition_penalty=s.repetition_penalty,
        )

    def chunk_size(self) -> int:
        if self.cfg.chunk_records:
            return self.cfg.chunk_records
        n = self.cfg.sampling.samples
        t = self.cfg.teacher
        return (
            max(1, math.ceil(4 * t.concurrency / n)) if t.is_api else max(1, 2 * t.batch_size // n)
        )

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        """Process every record not yet done; write and return the summary."""
        t0 = time.monotonic()
        inputs = [self.cfg.input, self.src_file]
        if self.cfg.mode == "cmkd":
            inputs.append(self.cfg.cmkd.image_records)
        check_output_vs_inputs(self.out, [str(p) for p in inputs if p])
        items, self.cmkd_root = load_items(self.cfg, self.tpl, self.src_file)
        outputs = ("traces", "rejects")
        if self.cfg.mode == "rejection-sampling":
            outputs += ("rl",)
        if self.cfg.hard is not None:
            outputs += ("hard",)
        with RunState(self.out, fingerprint(self.cfg), outputs, restart=self.restart) as state:
            self.state = state
            self._record_image_roots()
            pending = [it for it in items if it.id not in state.done]
            log.info(
                "distill (%s): %d record(s), %d already done, %d to go; %d sample(s) each%s "
                "from %s",
                self.cfg.mode,
                len(items),
                len(items) - len(pending),
                len(pending),
                self.cfg.sampling.samples,
                f", up to {self.cfg.sampling.attempts} attempts"
                if self.cfg.sampling.attempts > 1
                else "",
                self.cfg.teacher.name,
            )
            s = self.cfg.sampling
            if s.attempts > 1 and s.temperature == 0 and not self.cfg.teacher.is_api:
                log.warning(
                    "sampling.attempts with a local model at temperature 0: greedy decoding "
                    "repeats the same answer, so attempts after the first only cost time; "
                    "set a temperature above 0 for attempts that can differ"
                )
            complete = False
            try:
                self._process(pending)
                complete = True
            finally:
                summary = self._summary(items, complete, time.monotonic() - t0)
                write_json_atomic(self.out / SUMMARY_FILE, summary)
                self.close()
        return summary

    def _record_image_roots(self) -> None:
        """Write ``image_roots.json``: the folders this run read images from, relative to the
        output folder. Trace image paths point back into them, and ``rmkit train`` confines
        trace images to them (and the traces' own folder)."""
        roots = [r for r in (self.image_root, self.cmkd_root) if r is not None]
        rel = [os.path.relpath(r.absolute(), self.out.absolute()) for r in roots]
        write_json_atomic(self.out / IMAGE_ROOTS_FILE, {"image_roots": list(dict.fromkeys(rel))})

    def _process(self, pending: list[Item]) -> None:
        from rmkit.utils.console import Progress

        for item in [it for it in pending if it.skip]:
            self._commit(Outcome(item, [], [], record_reason=item.skip))
        todo = [it for it in pending if not it.skip]
        if not todo:
            return
        self._usage = UsageTracker(self.state, "teacher", self.backend())
        _account_before_caching(self.backend(), self._usage)
        self._since_sync = 0
        # consistency: one judge call per batch of records; otherwise records go one by one
        batch_size = self.chunk_size() if self.cfg.filters.consistency else 1
        failed: list[RmkitError] = []
        earlier: dict[str, Outcome] = {}  # records still without a kept trace: their attempts

        def records(items: list[Item], k: int) -> Iterator[tuple[Item, list[dict], list[Any]]]:
            try:
                yield from self._generate(items, k)
            except RmkitError as e:  # a request failed: first keep what did finish
                failed.append(e)

        with Progress("distill", total=len(todo), unit="records") as prog:
            try:
                for k in range(1, self.cfg.sampling.attempts + 1):
                    again: list[Item] = []
                    batch: list[Outcome] = []
                    with self._attempt_cache(k):
                        for item, conv, comps in records(todo, k):
                            batch.append(self._attempt_outcome(item, conv, comps, k))
                            if len(batch) >= batch_size:
                                again += self._finish(batch, prog, k, earlier)
                                batch = []
                        if batch:
                            again += self._finish(batch, prog, k, earlier)
                    if failed or not again:
                        break
                    todo = again
            finally:
                self.state.sync()
                self._usage.flush()
        if failed:
            raise failed[0]

    def _attempt_outcome(
        self, item: Item, conv: list[dict], comps: list[Any], attempt: int
    ) -> Outcome:
        """The record's samples of attempt ``attempt``, judged (indices after the earlier
        attempts' samples)."""
        o = judge_item(self, item, conv, comps)
        for s in o.samples:
            s.index += (attempt - 1) * self.cfg.sampling.samples
        if self.cfg.sampling.attempts > 1:
            o.attempts = attempt
        return o

    @contextmanager
    def _attempt_cache(self, attempt: int) -> Iterator[None]:
        """Attempt ``attempt`` >= 2 of an API teacher answers from (and stores in) a request
        cache of its own, ``attempt-<k>/`` beside the main one: it asks the teacher again
        where a greedy request would otherwise hit attempt 1's cache entry."""
        backend = self.backend()
        main = getattr(backend, "cache", None)
        if attempt == 1 or main is None:
            yield
            return
        from rmkit.generation.base import CompletionCache

        cache = CompletionCache(Path(main.path).parent / f"attempt-{attempt}")
        backend.cache = _AccountingCache(cache, self._usage) if hasattr(self, "_usage") else cache
        try:
            yield
        finally:
            backend.cache = main
            cache.close()

    def _generate(
        self, todo: list[Item], attempt: int = 1
    ) -> Iterator[tuple[Item, list[dict], list[Any]]]:
        """``(item, prompt, completions)`` per record, as they come: one stream for an API
        teacher, a ``generate`` call per chunk of records otherwise."""
        backend = self.backend()
        if self.cfg.teacher.is_api and hasattr(backend, "generate_iter"):
            prompts: dict[int, list[dict]] = {}

            def render_all() -> Iterator[list[dict]]:  # runs on the backend's event loop
                for i, it in enumerate(todo):
                    prompts[i] = self._render(it)
                    yield prompts[i]

            stream = backend.generate_iter(render_all(), self.sampling_params(todo[:1], attempt))
            for i, comps in stream:
                yield todo[i], prompts.pop(i), comps
            return
        size = self.chunk_size()
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            convs = [self._render(it) for it in chunk]
            outs = backend.generate(convs, self.sampling_params(chunk, attempt))
            yield from zip(chunk, convs, outs, strict=True)

    def _render(self, item: Item) -> list[dict]:
        from rmkit.prompts import render_judge_messages

        return render_judge_messages(item.record, item.order, self.tpl, self.image_root)

    def _finish(
        self, outcomes: list[Outcome], prog: Any, attempt: int, earlier: dict[str, Outcome]
    ) -> list[Item]:
        """Filter a batch of judged records further (consistency, keep: one) and commit them;
        returns the records to try again (no kept trace, attempts left), whose outcomes so far
        wait in ``earlier``."""
        if self.cfg.mode != "cmkd":
            self._consistency(outcomes)
            if self.cfg.mode == "rejection-sampling" and self.cfg.rejection.keep == "one":
                for o in outcomes:
                    S.keep_only_best(o.samples, S.EXTRA)
        again: list[Item] = []
        done = 0
        for o in outcomes:
            before = earlier.pop(o.item.id, None)
            if before is not None:
                o = before.then(o, attempt)
            if attempt < self.cfg.sampling.attempts and not o.kept_any():
                earlier[o.item.id] = o
                again.append(o.item)
                continue
            self._commit(o)
            done += 1
        self._since_sync += done
        if self._since_sync >= self.chunk_size():
            self.state.sync()
            self._usage.flush()
            self._since_sync = 0
        self._progress(prog, done)
        return again

    def _progress(self, prog: Any, advance: int) -> None:
        usage = self.state.usage_total()
        tokens = token_summary(usage, self.state.tokens if self.cfg.teacher.is_api else None)
        calls = usage.get("api_calls", 0) + self._usage.pending()["api_calls"]
        fields: dict[str, Any] = {**self.state.counts, "calls": calls, "tokens": tokens["total"]}
        cost = estimate_cost(tokens["prompt"], tokens["completion"], self.cfg.pricing)
        if cost is not None:
            fields["cost"] = round(cost, 4)
        prog.update(advance, **fields)

    def _consistency(self, outcomes: list[Outcome]) -> None:
        cons = self.cfg.filters.consistency
        pairs = [(o.item, s) for o in outcomes for s in o.samples if s.kept]
        if cons is None or not pairs:
            return
        judge = self.judge_backend()
        before = usage_snapshot(judge.stats)
        try:
            filter_consistency(
                pairs,
                judge,
                tpl=self.tpl,
                strict=self.strict,
                last_lines=cons.last_lines,
                max_chars=cons.max_chars,
            )
        finally:
            delta = usage_delta(before, usage_snapshot(judge.stats))
            self.state.add_usage({"who": "consistency", **delta})

    # ------------------------------------------------------------------ output

    def _commit(self, o: Outcome) -> None:
        self.state.commit(o.item.id, *record_lines(self, o))

    def _summary(self, items: list[Item], complete: bool, elapsed: float) -> dict[str, Any]:
        entries = [self.state.done[it.id] for it in items if it.id in self.state.done]
        cons = self.state.usage_total("consistency") if self.cfg.filters.consistency else None
        summary = build_summary(
            self.cfg,
            len(items),
            entries,
            self.state.usage_total(),
            cons,
            complete=complete and len(entries) == len(items),
            elapsed_s=elapsed,
            record_tokens=dict(self.state.tokens) if self.cfg.teacher.is_api else None,
        )
        if self.cfg.mode == "cmkd" and summary["cmkd"]["without_confidence"]:
            log.warning(
                "CMKD: %d selection(s) had no log-probabilities (the backend returned none); "
                "they were selected by correctness and format only",
                summary["cmkd"]["without_confidence"],
            )
        return summary

    # ------------------------------------------------------------------ backends

    def backend(self) -> Any:
        if self._backend is None:
            self._backend = make_generator(
                self.cfg.teacher, self.state.cache_dir, self.out / "server.log"
            )
        return self._backend

    def judge_backend(self) -> Any:
        if self._judge is None:
            judge = self.cfg.filters.consistency.judge  # type: ignore[union-attr]
            self._judge = make_generator(
                judge, self.state.cache_dir / "consistency", self.out / "judge-server.log"
            )
        return self._judge

    def close(self) -> None:
        if self._own_backend and self._backend is not None:
            self._backend.close()
            self._backend = None
        if self._own_judge and self._judge is not None:
            self._judge.close()
            self._judge = None


class _AccountingCache:
    """A backend's request cache that logs the usage (the paid call) before each answer is
    stored: an answer in the cache is never missing from ``state/usage.jsonl``, so a rerun
    after SIGKILL (which takes that answer from the cache, unpaid) still counts the call
    (SECURITY-REVIEW L8). Everything else goes to the wrapped cache."""

    def __init__(self, cache: Any, usage: UsageTracker) -> None:
        self._cache, self._usage = cache, usage

    def put(self, key: str, completion: Any) -> None:
        self._usage.flush()
        self._cache.put(key, completion)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: str) -> bool:
        return key in self._cache


def _account_before_caching(backend: Any, usage: UsageTracker) -> None:
    cache = getattr(backend, "cache", None)
    if cache is not None and not isinstance(cache, _AccountingCache):
        backend.cache = _AccountingCache(cache, usage)
    elif isinstance(cache, _AccountingCache):
        cache._usage = usage


def run_distill(
    cfg: DistillConfig, *, backend: Any = None, judge_backend: Any = None, restart: bool = False
) -> dict[str, Any]:
    """Run ``rmkit distill`` for ``cfg``; returns the summary (also in ``output/summary.json``)."""
    return Distiller(cfg, backend=backend, judge_backend=judge_backend, restart=restart).run()
