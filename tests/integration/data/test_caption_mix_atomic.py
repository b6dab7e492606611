"""``build-data caption`` and ``mix`` write their output folder as a whole (SECURITY-REVIEW L3).

A run that fails part-way (simulated by a failure after some split files were written) leaves
the previous output byte for byte, no staging folder behind, and the caption cache kept; the
next run replaces the whole folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers.openai_server import OpenAITestServer
from tests.integration.data.test_data_caption_cli import make_dataset, respond
from tests.unit.data.test_data_mix import write_set

from rmkit.cli.main import main
from rmkit.data import caption as caption_mod
from rmkit.data import mix as mix_mod
from rmkit.data.manifest import verify_manifest
from rmkit.errors import RmkitError


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (except the lock) and its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".rmkit.lock"
    }


class DiskFull(RmkitError):
    pass


def test_mix_failing_mid_write_leaves_the_previous_mix_intact(tmp_path, monkeypatch):
    a = write_set(tmp_path / "a", "a", {"train": 20, "val": 4, "test": 4})
    b = write_set(tmp_path / "b", "b", {"train": 10, "val": 2, "test": 2})
    out = tmp_path / "mix"
    mix_mod.mix_datasets([(a, 1), (b, 1)], out, seed=0)
    before = tree(out)
    real = mix_mod._Mixer.run_split

    def fail_at_val(self, split, *args):
        if split == "val":  # train.jsonl of the new mix is written by now
            assert (self.out / "train.jsonl").is_file() and self.out != out.resolve()
            raise DiskFull("no space left")
        return real(self, split, *args)

    monkeypatch.setattr(mix_mod._Mixer, "run_split", fail_at_val)
    with pytest.raises(DiskFull):
        mix_mod.mix_datasets([(a, 1), (b, 1)], out, seed=1)
    assert tree(out) == before
    verify_manifest(out)
    assert not list(tmp_path.glob(".rmkit-build-*"))
    monkeypatch.undo()
    mix_mod.mix_datasets([(a, 1), (b, 1)], out, seed=1)
    assert tree(out) != before and verify_manifest(out)["seed"] == 1


def test_mix_refuses_an_output_holding_foreign_files(tmp_path):
    a = write_set(tmp_path / "a", "a", {"train": 4})
    b = write_set(tmp_path / "b", "b", {"train": 4})
    out = tmp_path / "mix"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RmkitError, match=r"holds files that rmkit build-data mix did not write"):
        mix_mod.mix_datasets([(a, 1), (b, 1)], out)
    assert (out / "notes.txt").read_text() == "mine"


def _caption(built: Path, out: Path, url: str, *extra: str) -> int:
    args = ["build-data", "caption", str(built), "-o", str(out), "--base-url", url]
    return main([*args, "--api-model", "m", *extra])


def test_caption_failing_mid_write_leaves_the_previous_output_intact(tmp_path, monkeypatch):
    built = make_dataset(tmp_path, 4)
    out = tmp_path / "captioned"
    with OpenAITestServer(respond) as srv:
        assert _caption(built, out, srv.url) == 0
        before = tree(out)
        assert "caption_cache.jsonl" in before
        real = caption_mod._write_split

        def fail_on_val(path, target, *args):
            if target.name == "val.jsonl":  # train.jsonl of the new run is written by now
                assert (target.parent / "train.jsonl").is_file()
                assert target.parent != out.resolve()
                raise DiskFull("no space left")
            return real(path, target, *args)

        monkeypatch.setattr(caption_mod, "_write_split", fail_on_val)
        assert _caption(built, out, srv.url, "--keep-text") != 0
        assert tree(out) == before  # old splits, manifest and cache, byte for byte
        assert not list(tmp_path.glob(".rmkit-build-*"))
        monkeypatch.undo()
        n_requests = len(srv.chat_requests())
        assert _caption(built, out, srv.url, "--keep-text") == 0
        assert len(srv.chat_requests()) == n_requests  # every caption came from the cache
    assert verify_manifest(out)["settings"]["keep_text"] is True
    assert (out / "caption_cache.jsonl").read_bytes() == before["caption_cache.jsonl"]
