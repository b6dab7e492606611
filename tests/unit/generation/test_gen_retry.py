"""Retry policy: classification, Retry-After parsing, backoff with full jitter."""

from __future__ import annotations

import random
import re

import pytest

from rmkit.generation import retry as rp
from rmkit.generation.media import bytes_to_data_url, extension_for, sniff_mime


def test_kind_for_status():
    assert rp.kind_for_status(429) == rp.RATE_LIMIT
    assert (
        rp.kind_for_status(500) == rp.kind_for_status(503) == rp.kind_for_status(408) == rp.SERVER
    )
    assert (
        rp.kind_for_status(400) == rp.kind_for_status(401) == rp.kind_for_status(404) == rp.CLIENT
    )
    assert not rp.is_retryable(rp.CLIENT) and rp.is_retryable(rp.EMPTY)


def test_parse_retry_after():
    assert rp.parse_retry_after({"Retry-After": "3"}) == 3.0
    assert rp.parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert rp.parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert rp.parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, now=now) == 30.0
    assert rp.parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT"}, now=now) == 0.0
    assert rp.parse_retry_after({"Retry-After": "soon"}) is None
    assert rp.parse_retry_after({"Retry-After": "-4"}) is None
    assert rp.parse_retry_after({}) is None and rp.parse_retry_after(None) is None


def test_backoff_full_jitter_bounds_and_retry_after():
    rng = random.Random(0)
    for attempt, bound in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)]:
        draws = [rp.backoff_delay(attempt, base=0.5, cap=30.0, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= bound for d in draws)
        assert max(draws) > 0.8 * bound  # really spread over [0, bound]
    assert rp.backoff_delay(0, base=0.5, cap=30.0, rng=rng, retry_after=5.0) == 5.0
    assert (
        rp.backoff_delay(0, base=0.5, cap=30.0, rng=rng, retry_after=500.0, retry_after_max=60.0)
        == 60.0
    )
    # a tiny Retry-After never shortens the jittered wait below what backoff would choose
    fixed = random.Random(1)
    jitter = random.Random(1).uniform(0.0, 2.0)
    assert rp.backoff_delay(2, base=0.5, cap=30.0, rng=fixed, retry_after=0.0) == jitter


def test_mime_sniffing():
    assert sniff_mime(b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert sniff_mime(b"\xff\xd8\xff\xe0....") == "image/jpeg"
    assert sniff_mime(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert bytes_to_data_url(b"GIF89a..").startswith("data:image/gif;base64,R0lGODlh")
    assert extension_for("image/jpeg") == ".jpg" and extension_for("image/png") == ".png"


def test_mime_sniffing_ignores_the_extension(tmp_path):
    """Bytes that are not a known image are refused whatever the name says (no fallback to
    the extension: images are sent to APIs with a declared type)."""
    from rmkit.errors import RmkitError
    from rmkit.generation.media import image_to_data_url

    with pytest.raises(RmkitError, match=r"not a recognised image format: x\.jpg"):
        sniff_mime(b"????", "x.jpg")
    fake = tmp_path / "secret.png"
    fake.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(RmkitError, match=re.escape(f"not a recognised image format: {fake}")):
        image_to_data_url(fake)
