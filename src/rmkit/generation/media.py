"""Images as bytes, MIME types and data URLs (what OpenAI-compatible servers accept)."""

from __future__ import annotations

import base64
from pathlib import Path

from rmkit.errors import RmkitError

# (magic prefix, MIME type); WebP is checked separately (RIFF....WEBP).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)

_EXT = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".gif": "gif",
    ".webp": "webp",
    ".bmp": "bmp",
}


def sniff_mime(data: bytes, name: str = "") -> str:
    """The image MIME type read from the first bytes (PNG, JPEG, GIF, WebP, BMP, TIFF).

    The file name is used only to name the file in the error: bytes that are not a recognised
    image are refused whatever the extension says, so nothing is ever sent under a type it
    does not have (SECURITY-REVIEW M5).
    """
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise RmkitError(
        f"not a recognised image format: {name or '<bytes>'} "
        f"(its first bytes {data[:8]!r} are not PNG, JPEG, GIF, WebP, BMP or TIFF)",
        hint="use PNG, JPEG, GIF, WebP or BMP images; the file extension does not decide the type",
    )


def image_to_data_url(path: str | Path) -> str:
    """Read an image file and return ``data:<mime>;base64,<payload>``."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise RmkitError(
            f"image not readable: {path} ({e.strerror})",
            hint="image parts must hold absolute paths (resolve them against the dataset folder)",
        ) from None
    return bytes_to_data_url(data, str(path))


def bytes_to_data_url(data: bytes, name: str = "") -> str:
    mime = sniff_mime(data, name)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def extension_for(mime: str) -> str:
    """A file extension for an image MIME type (``image/jpeg`` -> ``.jpg``)."""
    sub = mime.split("/", 1)[-1].lower()
    for ext, name in _EXT.items():
        if name == sub:
            return ext
    raise RmkitError(
        f"unsupported image type {mime!r}", hint="send PNG, JPEG, GIF, WebP or BMP images"
    )


def to_openai_messages(messages: list[dict], urls: dict[str, str] | None = None) -> list[dict]:
    """rmkit chat messages -> OpenAI ones: image parts become ``image_url`` parts with data URLs
    (local files read and base64-encoded once per path via ``urls``); URLs pass through."""
    urls = {} if urls is None else urls
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for p in content:
                if isinstance(p, dict) and p.get("type") == "image":
                    ref = p.get("image")
                    if not isinstance(ref, str):
                        raise RmkitError(f"image part without an 'image' reference: {p!r}")
                    if ref not in urls:
                        urls[ref] = (
                            ref
                            if ref.startswith(("data:", "http://", "https://"))
                            else image_to_data_url(ref)
                        )
                    parts.append({"type": "image_url", "image_url": {"url": urls[ref]}})
                else:
                    parts.append(p)
            content = parts
        out.append({"role": m["role"], "content": content})
    return out
