"""Images in built datasets: decode, check, store once by content hash, reference by path.

A converter never touches image data: it puts :class:`~rmkit.data.sources.base.ImageSource`
placeholders (the row's raw value and the field it came from) where images go. The build then
calls :func:`materialize` on each pair, which hands every placeholder to :class:`ImageStore`:

- the value is read: image bytes, a Hugging Face ``Image`` struct ``{"bytes", "path"}``, a data
  URL, base64 text, or a path relative to one of the allowed roots (absolute paths must lie in
  a root too; symlinks and ``..`` are resolved before the check; URLs are refused);
- the bytes are checked with Pillow: file size, format, width/height and pixel count (read
  from the header, before decoding), then ``verify()`` and a full ``load()``;
- the original bytes are written once to ``DIR/images/<h[:2]>/<h>.<ext>`` (``h`` = SHA-256 of
  the bytes, ``ext`` from the detected format) through a temporary name and a rename;
- the placeholder becomes that path, relative to ``DIR``.

One image is in memory at a time; what the store keeps is a map from content digest to file
extension (about 100 bytes per distinct image) and a bounded memo of resolved paths.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import os
import re
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmkit.utils.io import TMP_PREFIX

IMAGE_DIR = "images"
# written by rmkit distill beside its traces: the folders their image paths point into
IMAGE_ROOTS_FILE = "image_roots.json"
EXTENSIONS = {
    "PNG": "png",
    "JPEG": "jpg",
    "MPO": "jpg",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
}
GENERATION_TASKS = ("image_generation", "video_generation")
STORED_NAME = re.compile(r"^images/([0-9a-f]{2})/([0-9a-f]{64})\.[a-z]+$")
_B64_MAGIC = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR", "Qk", "SUkq", "TU0A")
_PATH_MEMO_MAX = 100_000


class ImageError(Exception):
    """An image that cannot be used: the row ``field``, a message naming the image, a hint."""

    def __init__(self, field: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.field, self.message, self.hint = field, message, hint


@dataclass
class ImageLimits:
    """What an acceptable image is (see ``images:`` in a build-data recipe)."""

    max_file_bytes: int = 50_000_000
    max_side: int = 16_384
    max_pixels: int = 80_000_000
    min_side: int = 1
    formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


@dataclass
class StoreStats:
    written: int = 0  # new files written by this run
    reused: int = 0  # placeholders that resolved to content seen before (this run or on disk)
    checked: int = 0  # distinct images decoded and checked


def check_image(data: bytes, limits: ImageLimits, name: str, field_name: str) -> str:
    """Decode ``data`` with Pillow and check it against ``limits``; return the file extension.

    Raises :class:`ImageError` naming ``name`` when the bytes are not an acceptable image.
    """
    from PIL import Image, UnidentifiedImageError

    hint = "fix or remove the image, change the limits under images: in the recipe, or pass --on-error skip"
    if len(data) > limits.max_file_bytes:
        raise ImageError(
            field_name,
            f"image {name} is {len(data):,} bytes, over images.max_file_bytes={limits.max_file_bytes:,}",
            hint,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format or "?", im.size
                if ("JPEG" if fmt == "MPO" else fmt) not in limits.formats:
                    raise ImageError(
                        field_name,
                        f"image {name} is {fmt}; allowed formats: {', '.join(limits.formats)}",
                        hint,
                    )
                _check_size(w, h, limits, name, field_name, hint)
                im.verify()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except ImageError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageError(field_name, f"image {name} has too many pixels ({e})", hint) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(
                field_name, f"image {name} is not a decodable image ({type(e).__name__}: {e})", hint
            ) from None
    return EXTENSIONS.get(fmt, fmt.lower())


def _check_size(w: int, h: int, limits: ImageLimits, name: str, field_name: str, hint: str) -> None:
    if min(w, h) < limits.min_side:
        raise ImageError(
            field_name, f"image {name} is {w}x{h}, below images.min_side={limits.min_side}", hint
        )
    if max(w, h) > limits.max_side:
        raise ImageError(
            field_name, f"image {name} is {w}x{h}, over images.max_side={limits.max_side}", hint
        )
    if w * h > limits.max_pixels:
        raise ImageError(
            field_name,
            f"image {name} is {w}x{h} = {w * h:,} pixels, over images.max_pixels={limits.max_pixels:,}",
            hint,
        )


def decode_base64(text: str) -> bytes | None:
    """The bytes of a data URL or of bare base64 image text; None when ``text`` is neither."""
    if text.startswith("data:"):
        head, sep, payload = text.partition(",")
        if not sep or not head.endswith(";base64"):
            return None
        text = payload
    elif len(text) < 64 or not text.startswith(_B64_MAGIC):
        return None
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass
class ImageStore:
    """Content-addressed image files under ``out/images`` (see the module docstring)."""

    out: Path
    limits: ImageLimits = field(default_factory=ImageLimits)
    roots: list[Path] = field(default_factory=list)
    stats: StoreStats = field(default_factory=StoreStats)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self._known: dict[bytes, str] = {}  # sha256 digest -> extension, for this run
        self._paths: dict[str, str] = {}  # resolved source path -> stored reference

    def set_roots(self, roots: Iterable[str | os.PathLike]) -> None:
        self.roots = [Path(r).expanduser().resolve() for r in roots]

    # -- reading -------------------------------------------------------------------------------
    def put(self, value: Any, field_name: str) -> str:
        """Store one image value; return its reference (a path relative to ``out``)."""
        if isinstance(value, dict):
            data = value.get("bytes")
            if data:
                return self.put_bytes(bytes(data), field_name, _struct_name(value))
            if value.get("path"):
                return self.put(str(value["path"]), field_name)
            raise ImageError(field_name, "an image struct has neither 'bytes' nor 'path'")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.put_bytes(bytes(value), field_name, None)
        if isinstance(value, str) and value.strip():
            data = decode_base64(value)
            if data is not None:
                return self.put_bytes(
                    data, field_name, "<data URL>" if value.startswith("data:") else "<base64 text>"
                )
            if value.startswith("data:"):
                raise ImageError(
                    field_name,
                    f"image {value[:40]!r}... is a data URL without a valid base64 payload",
                )
            return self.put_path(value, field_name)
        kind = "an empty string" if isinstance(value, str) else type(value).__name__
        raise ImageError(
            field_name,
            f"an image (bytes, {{bytes, path}} struct, path, data URL or base64) was expected, got {kind}",
        )

    def put_path(self, ref: str, field_name: str) -> str:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", ref) and not ref.startswith("file://"):
            raise ImageError(
                field_name,
                f"image {ref!r} is a URL; rmkit does not download images",
                "download the images and pass their folder with --image-root",
            )
        real = self.resolve(ref.removeprefix("file://"), field_name)
        key = str(real)
        hit = self._paths.get(key)
        if hit is not None:
            self.stats.reused += 1
            return hit
        try:
            size = real.stat().st_size
        except OSError as e:
            raise ImageError(field_name, f"image {ref!r} cannot be read ({e.strerror})") from None
        if size > self.limits.max_file_bytes:
            raise ImageError(
                field_name,
                f"image {ref!r} is {size:,} bytes, over images.max_file_bytes={self.limits.max_file_bytes:,}",
                "raise images.max_file_bytes or pass --on-error skip",
            )
        ref_out = self.put_bytes(real.read_bytes(), field_name, repr(ref))
        if len(self._paths) >= _PATH_MEMO_MAX:
            self._paths.clear()
        self._paths[key] = ref_out
        return ref_out

    def resolve(self, ref: str, field_name: str) -> Path:
        """The real path of ``ref`` (relative to a root, or absolute) inside an allowed root."""
        return resolve_in_roots(ref, self.roots, field_name, expand_user=True)

    # -- storing -------------------------------------------------------------------------------
    def put_bytes(self, data: bytes, field_name: str, name: str | None) -> str:
        digest = hashlib.sha256(data).digest()
        hexd = digest.hex()
        ext = self._known.get(digest)
        if ext is not None:
            self.stats.reused += 1
            return f"{IMAGE_DIR}/{hexd[:2]}/{hexd}.{ext}"
        label = name or f"<{len(data):,} bytes, sha256 {hexd[:12]}>"
        ext = check_image(data, self.limits, label, field_name)
        self.stats.checked += 1
        self._known[digest] = ext
        rel = f"{IMAGE_DIR}/{hexd[:2]}/{hexd}.{ext}"
        target = self.out / rel
        if target.is_file() and target.stat().st_size == len(data):
            self.stats.reused += 1
        else:
            write_file_atomic(target, data)
            self.stats.written += 1
        return rel

    def prune(self, keep: set[str]) -> tuple[int, int, int]:
        """Delete stored images not in ``keep`` and stale temporary files.

        Returns ``(files kept, their total bytes, files removed)``.
        """
        root = self.out / IMAGE_DIR
        kept = size = removed = 0
        if not root.is_dir():
            return 0, 0, 0
        for sub in sorted(root.iterdir()):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                rel = f"{IMAGE_DIR}/{sub.name}/{entry.name}"
                if rel in keep:
                    kept += 1
                    size += entry.stat().st_size
                elif entry.name.startswith(TMP_PREFIX) or STORED_NAME.match(rel):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        removed += 1
            with contextlib.suppress(OSError):
                sub.rmdir()  # only succeeds when empty
        return kept, size, removed


_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def resolve_in_roots(
    ref: str,
    roots: Iterable[str | os.PathLike],
    field_name: str = "images",
    *,
    expand_user: bool = False,
) -> Path:
    """The real path of image reference ``ref``, which must lie inside one of ``roots``.

    The one path rule every reader of image paths follows (build-data, distill, eval, train,
    caption; SECURITY-REVIEW M5): a relative ``ref`` is joined to each root in turn, an absolute
    one is taken as is; symlinks and ``..`` are resolved *before* the check, and the real path
    must be an existing file inside a root. URLs (``file://`` included) are refused. Raises
    :class:`ImageError` naming ``ref`` and where it leads.
    """
    if _URL_RE.match(ref):
        raise ImageError(
            field_name,
            f"image {ref!r} is a URL; image references are paths relative to the image root",
            "download or copy the image into the dataset's image folder (--image-root)",
        )
    real_roots = [Path(r).expanduser().resolve() for r in roots]
    if not real_roots:
        raise ImageError(
            field_name,
            f"image {ref!r} is a path but no image root is allowed",
            "pass the folder the paths are relative to with --image-root DIR",
        )
    p = Path(ref).expanduser() if expand_user else Path(ref)
    tries = [p] if p.is_absolute() else [root / p for root in real_roots]
    outside = None
    for cand in tries:
        real = cand.resolve()
        if not any(real.is_relative_to(root) for root in real_roots):
            outside = outside or real
            continue
        if real.is_file():
            return real
    shown = ", ".join(str(r) for r in real_roots)
    if outside is not None:
        raise ImageError(
            field_name,
            f"image {ref!r} resolves to {outside}, outside the allowed image roots ({shown})",
            "image paths must stay inside an --image-root folder",
        )
    raise ImageError(
        field_name,
        f"image {ref!r} not found under the image roots ({shown})",
        "pass the folder the image paths are relative to with --image-root DIR",
    )


def confine_record_images(
    rec: dict[str, Any], roots: Iterable[str | os.PathLike], where: str
) -> dict[str, str]:
    """Check every image reference of record ``rec`` (:func:`record_image_refs`) with
    :func:`resolve_in_roots`; return ``{ref: real path}``.

    ``data:`` URLs (inline bytes, no file is read) are left out. Raises
    :class:`~rmkit.errors.RmkitError` naming ``where`` (``file:line``), the record id, the field
    and the path.
    """
    from rmkit.errors import RmkitError

    roots = list(roots)
    out: dict[str, str] = {}
    for ref in record_image_refs(rec):
        if not isinstance(ref, str) or ref.startswith("data:"):
            continue
        try:
            out[ref] = str(resolve_in_roots(ref, roots, "images"))
        except ImageError as e:
            raise RmkitError(
                f"{where}: record {rec.get('id', '<no id>')!r}: {e.message}", hint=e.hint
            ) from None
    return out


def _struct_name(value: dict) -> str | None:
    path = value.get("path")
    return f"{path!r} (embedded bytes)" if isinstance(path, str) and path else None


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- records ------------------------------------------------------------------------------------
def record_image_refs(rec: dict[str, Any]) -> list[str]:
    """Every image reference of a record, in order, without repeats.

    That is ``images``, image parts of the prompt, and for generation tasks (unless the record
    is a caption-substituted copy) the candidates.
    """
    refs = list(rec.get("images") or [])
    prompt = rec.get("prompt")
    if isinstance(prompt, list):
        for msg in prompt:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, list):
                refs += [
                    p["image"]
                    for p in content
                    if isinstance(p, dict)
                    and p.get("type") == "image"
                    and isinstance(p.get("image"), str)
                ]
    if rec.get("task") in GENERATION_TASKS and not (rec.get("meta") or {}).get(
        "caption_substituted"
    ):
        refs += [c for c in rec.get("candidates") or [] if isinstance(c, str)]
    return list(dict.fromkeys(refs))


def materialize(pair: Any, store: ImageStore) -> None:
    """Replace every :class:`ImageSource` of a converted pair by its stored reference (in place)."""
    from rmkit.data.sources.base import ImageSource

    memo: dict[int, str] = {}

    def put(src: Any) -> Any:
        if not isinstance(src, ImageSource):
            return src
        key = id(src)
        if key not in memo:
            memo[key] = store.put(src.value, src.field)
        return memo[key]

    pair.images = [put(s) for s in pair.images]
    if any(isinstance(c, ImageSource) for c in pair.candidates):
        pair.candidates = [put(c) for c in pair.candidates]
    if isinstance(pair.prompt, list):
        for msg in pair.prompt:
            content = msg.get("content")
            if isinstance(content, list):
                for part in content:
                    if part.get("type") == "image":
                        part["image"] = put(part.get("image"))


def compact_row(row: Any, limit: int = 2000) -> Any:
    """A copy of a source row fit for rejects.jsonl: bytes and long strings summarised."""
    if isinstance(row, dict):
        return {k: compact_row(v, limit) for k, v in row.items()}
    if isinstance(row, list):
        return [compact_row(v, limit) for v in row]
    if isinstance(row, (bytes, bytearray, memoryview)):
        return f"<{len(row):,} bytes>"
    if isinstance(row, str) and len(row) > limit:
        return row[:200] + f"... <{len(row):,} characters>"
    if isinstance(row, (str, int, float, bool)) or row is None:
        return row
    return repr(row)[:200]
