"""Real players through the origin (issue #12): ffprobe and ffmpeg read an MP4 through one
signed URL, decode every frame and seek into the middle, exactly as they do from the local
file; an MP4 whose index (``moov``) is at the end plays too, which takes range requests;
and an HLS rendition plays through one prefix token, every segment fetch audited with the
viewing session and never the token.

The media are made once per module by ffmpeg's test sources: six seconds of 320x240 video
at 25 fps (a keyframe every second) and a 440 Hz tone. Skipped where ffmpeg is missing,
except under CI (``CI`` set), where a missing ffmpeg fails the run instead of hiding it.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from origin_harness import OriginThread, target_of, upload

from reelvault.app import Vault
from reelvault.audit import AuditEvent, MemoryAuditSink
from reelvault.audit.events import render_json
from reelvault.distribution.tokens import Reason

_FFMPEG = shutil.which("ffmpeg")
_FFPROBE = shutil.which("ffprobe")
_MISSING = "ffmpeg and ffprobe are not installed (apt-get install ffmpeg)"

pytestmark = [
    pytest.mark.db,
    # Under CI the tests run regardless and the `media` fixture fails instead.
    pytest.mark.skipif(
        (_FFMPEG is None or _FFPROBE is None) and not os.environ.get("CI"), reason=_MISSING
    ),
]

SECONDS = 6
FPS = 25
MIDDLE = 3  # seconds: where the seek lands, a keyframe
SEEK_FRAMES = 10
TIMEOUT = 60
# What ffmpeg may open: files, the origin over http (and the tcp below it), crypto for HLS.
WHITELIST = ("-protocol_whitelist", "file,http,tcp,crypto")
HLS_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t"}


@dataclass(frozen=True)
class Media:
    faststart: Path  # moov before mdat
    moov_last: Path  # moov after mdat: the player must fetch the end first
    hls: Path  # index.m3u8 and seg000.ts ...


@dataclass(frozen=True)
class Frame:
    stream: int  # 0 video, 1 audio
    md5: str


def _run(tool: str | None, *args: str) -> subprocess.CompletedProcess[bytes]:
    assert tool is not None
    no_stdin = ["-nostdin"] if tool == _FFMPEG else []  # ffprobe has no such option
    return subprocess.run(
        [tool, *no_stdin, "-hide_banner", "-loglevel", "error", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[bytes]) -> bytes:
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def _video_codec() -> list[str]:
    """libx264 where this ffmpeg has it (Debian's does), else its built-in MPEG-4 part 2."""
    listing = _ok(_run(_FFMPEG, "-encoders")).decode()
    names = {line.split()[1] for line in listing.splitlines() if len(line.split()) > 1}
    # A keyframe a second, and 1.5 Mbit/s: the middle is some 600 KB in, further than
    # ffmpeg reads through (its TCP window) rather than asking for a new range.
    rate = ["-g", str(FPS), "-b:v", "1500k"]
    if "libx264" in names:
        return ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *rate]
    # MPEG-TS has no global header: repeat the stream headers in band on every keyframe.
    return ["-c:v", "mpeg4", "-bsf:v", "dump_extra", *rate]


def _top_level_boxes(data: bytes) -> list[tuple[bytes, int]]:
    """(type, offset) of each top-level ISO BMFF box."""
    boxes, at = [], 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        if size == 1:
            (size,) = struct.unpack(">Q", data[at + 8 : at + 16])
        elif size == 0:
            size = len(data) - at
        boxes.append((kind, at))
        at += size
    return boxes


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    if _FFMPEG is None or _FFPROBE is None:
        pytest.fail(_MISSING)  # only reached under CI, which must prove a player plays
    root = tmp_path_factory.mktemp("media")
    sources = [
        *("-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={FPS}"),
        *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"),
        *("-t", str(SECONDS)),
        *_video_codec(),
        *("-c:a", "aac", "-b:a", "64k"),
    ]
    made = Media(root / "faststart.mp4", root / "moov-last.mp4", root / "hls")
    _ok(_run(_FFMPEG, *sources, "-movflags", "+faststart", str(made.faststart)))
    _ok(_run(_FFMPEG, *sources, str(made.moov_last)))
    made.hls.mkdir()
    _ok(
        _run(
            _FFMPEG,
            *sources,
            *("-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod"),
            *("-hls_segment_filename", str(made.hls / "seg%03d.ts")),
            str(made.hls / "index.m3u8"),
        )
    )
    # The two MP4s are what their names say.
    for path, moov_first in ((made.faststart, True), (made.moov_last, False)):
        kinds = [kind for kind, _ in _top_level_boxes(path.read_bytes())]
        assert (kinds.index(b"moov") < kinds.index(b"mdat")) is moov_first
    assert len(list(made.hls.glob("seg*.ts"))) >= SECONDS - 1
    return made


def _probe(source: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        _ok(_run(_FFPROBE, "-show_format", "-show_streams", "-of", "json", source))
    )
    del found["format"]["filename"]
    return found


def _framemd5(source: str, *, seek: bool = False) -> bytes:
    """Every decoded frame of the video and the audio, one hash a line (``-f framemd5``);
    with ``seek``, from MIDDLE seconds on and only SEEK_FRAMES video frames."""
    start = ("-ss", str(MIDDLE)) if seek else ()
    stop = ("-frames:v", str(SEEK_FRAMES)) if seek else ()
    return _ok(
        _run(
            _FFMPEG,
            *WHITELIST,
            *start,
            *("-i", source),
            *("-map", "0:v", "-map", "0:a"),
            *stop,
            *("-f", "framemd5", "-"),
        )
    )


def _frames(framemd5: bytes) -> list[Frame]:
    frames = []
    for line in framemd5.decode().splitlines():
        if line.startswith("#"):
            continue
        stream, _dts, _pts, _duration, _size, md5 = (part.strip() for part in line.split(","))
        frames.append(Frame(int(stream), md5))
    return frames


def _fetches(audit_sink: MemoryAuditSink, path: str) -> list[AuditEvent]:
    return [
        event
        for event in audit_sink.events
        if event.action == "asset.fetch" and any(r.path == path for r in event.resources)
    ]


def _reads(events: list[AuditEvent]) -> list[tuple[int, int]]:
    """(offset, length) of every read the events record."""
    return [
        (r.offset, r.length)
        for e in events
        for r in e.resources
        if r.offset is not None and r.length is not None
    ]


def _signed_url(vault: Vault, origin: OriginThread, tenant: str, path: str, data: bytes) -> str:
    info = upload(vault, tenant, path, data, content_type="video/mp4")
    issued = vault.distribution.issue(tenant, asset_id=info.id, ttl=600)
    return origin.base_url + target_of(issued.url)


def test_ffprobe_reads_the_same_streams_through_a_signed_url(
    vault: Vault, origin: OriginThread, tenant: str, media: Media
) -> None:
    url = _signed_url(vault, origin, tenant, "films/a.mp4", media.faststart.read_bytes())

    remote = _probe(url)

    assert remote == _probe(str(media.faststart))
    assert float(remote["format"]["duration"]) == pytest.approx(SECONDS, abs=0.1)
    assert sorted(s["codec_type"] for s in remote["streams"]) == ["audio", "video"]


def test_ffmpeg_decodes_every_frame_through_a_signed_url(
    vault: Vault, origin: OriginThread, tenant: str, media: Media
) -> None:
    url = _signed_url(vault, origin, tenant, "films/a.mp4", media.faststart.read_bytes())

    remote = _framemd5(url)

    assert remote == _framemd5(str(media.faststart))
    video = [f for f in _frames(remote) if f.stream == 0]
    assert len(video) == SECONDS * FPS
    assert any(f.stream == 1 for f in _frames(remote))


def test_ffmpeg_seeks_to_the_middle_with_a_range_request(
    vault: Vault, origin: OriginThread, tenant: str, media: Media, audit_sink: MemoryAuditSink
) -> None:
    data = media.faststart.read_bytes()
    url = _signed_url(vault, origin, tenant, "films/a.mp4", data)

    remote = _framemd5(url, seek=True)

    assert remote == _framemd5(str(media.faststart), seek=True)
    # The frames are the middle's: those the full decode has from MIDDLE seconds on.
    everything = [f.md5 for f in _frames(_framemd5(str(media.faststart))) if f.stream == 0]
    landed = [f.md5 for f in _frames(remote) if f.stream == 0]
    assert landed == everything[MIDDLE * FPS : MIDDLE * FPS + SEEK_FRAMES]
    # ... fetched from the middle of the file, not read through from its start.
    reads = _reads(_fetches(audit_sink, "films/a.mp4"))
    assert any(offset > len(data) // 3 for offset, _ in reads), reads


def test_an_mp4_with_its_index_at_the_end_plays_through_range_requests(
    vault: Vault, origin: OriginThread, tenant: str, media: Media, audit_sink: MemoryAuditSink
) -> None:
    data = media.moov_last.read_bytes()
    (moov_at,) = [at for kind, at in _top_level_boxes(data) if kind == b"moov"]
    url = _signed_url(vault, origin, tenant, "films/a.mp4", data)

    remote = _framemd5(url)

    assert remote == _framemd5(str(media.moov_last))
    assert len([f for f in _frames(remote) if f.stream == 0]) == SECONDS * FPS
    fetches = _fetches(audit_sink, "films/a.mp4")
    assert fetches and all(e.status == "OK" for e in fetches)
    ranged = [read for read in _reads(fetches) if read != (0, len(data))]
    assert len(ranged) >= 2, ranged  # to the index at the end, and back to the frames
    assert any(0 < offset <= moov_at < offset + length for offset, length in ranged), ranged


def _upload_rendition(vault: Vault, tenant: str, directory: Path, prefix: str) -> set[str]:
    paths = set()
    for file in sorted(directory.iterdir()):
        path = prefix + file.name
        upload(vault, tenant, path, file.read_bytes(), content_type=HLS_TYPES[file.suffix])
        paths.add(path)
    return paths


def test_an_hls_rendition_plays_through_one_prefix_token(
    vault: Vault, origin: OriginThread, tenant: str, media: Media, audit_sink: MemoryAuditSink
) -> None:
    paths = _upload_rendition(vault, tenant, media.hls, "hls/720p/")
    issued = vault.distribution.issue(tenant, prefix="hls/720p/", ttl=600, session_id="viewer-1")
    assert issued.url.endswith(f"/t/{issued.token}/{tenant}/hls/720p/")

    remote = _framemd5(origin.base_url + target_of(issued.url) + "index.m3u8")

    assert remote == _framemd5(str(media.hls / "index.m3u8"))
    assert len([f for f in _frames(remote) if f.stream == 0]) == SECONDS * FPS
    fetches = [e for path in sorted(paths) for e in _fetches(audit_sink, path)]
    fetched = {r.path for e in fetches for r in e.resources}
    assert fetched == paths  # the playlist and every segment, each audited
    assert all(e.status == "OK" and e.detail.get("session") == "viewer-1" for e in fetches)
    assert all(e.log_id == tenant for e in fetches)  # in the tenant's own log
    for event in audit_sink.events:
        assert issued.token not in repr(event)
        assert issued.token not in render_json(event)


def test_a_token_for_another_rendition_plays_nothing(
    vault: Vault, origin: OriginThread, tenant: str, media: Media, audit_sink: MemoryAuditSink
) -> None:
    _upload_rendition(vault, tenant, media.hls, "hls/720p/")
    other = vault.distribution.issue(tenant, prefix="hls/1080p/", ttl=600, session_id="viewer-1")
    playlist = target_of(other.url).replace("/hls/1080p/", "/hls/720p/") + "index.m3u8"

    result = _run(_FFMPEG, *WHITELIST, "-i", origin.base_url + playlist, "-f", "framemd5", "-")

    assert result.returncode != 0
    refused = [e for e in audit_sink.events if e.action == "asset.fetch"]
    assert refused, "the refusal is audited"
    assert all(e.detail.get("http_status") == 403 for e in refused), refused
    assert all(e.detail.get("reason") == Reason.NOT_COVERED for e in refused)
    assert all(e.status == "PERMISSION_DENIED" and e.log_id == tenant for e in refused)
    assert origin.fetch(playlist).status == 403
