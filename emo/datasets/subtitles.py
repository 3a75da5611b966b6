"""SRT and WebVTT subtitle files -> cues (start, end, text, speaker), with line-numbered problems.

Hand-written and small: SRT and WebVTT cue blocks, ``,``/``.`` milliseconds, hours left out, cue
settings, multi-line cues, ``<i>``/``{\\an8}`` markup removed, ``<v Name>`` voices, ``NOTE``/``STYLE``
blocks, BOM and CRLF, UTF-8 else cp1252 else latin-1. Used by the ``subtitles`` dataset adapter. Not
pysubs2/srt/webvtt-py: none reports malformed cues by line or keeps WebVTT voices across both formats (docs/dependencies.md).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Cue", "SUBTITLE_ENCODINGS", "decode_subtitles", "parse_subtitles", "read_subtitles"]


@dataclass(frozen=True)
class Cue:
    """One subtitle cue. ``index`` counts the file's cues from 1 (malformed ones too, so ids stay
    stable); ``line`` is the line of its time line; ``text`` has markup removed ("" when empty)."""

    index: int
    start: float  # seconds
    end: float  # seconds
    text: str
    speaker: str | None
    line: int


_TS = r"(?:(\d+):)?([0-5]\d):([0-5]\d)[,.](\d{3})"
_TIME_LINE = re.compile(rf"^\s*{_TS}\s*-->\s*{_TS}(?:\s+.*)?\s*$")
_TIME_LIKE = re.compile(r"\d+:\d{2}[,.:]\d")
_VOICE = re.compile(r"<v(?:\.[^\s>]*)?\s+([^>]*)>")
_TAG = re.compile(r"<[^>]*>")
_ASS = re.compile(r"\{\\[^}]*\}")


def _seconds(h: str | None, m: str, s: str, ms: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_subtitles(text: str) -> tuple[list[Cue], list[tuple[int, str]]]:
    """SRT or WebVTT text -> ``(cues, problems)``; a problem is ``(line, reason)`` for a cue that cannot
    be read (it makes no cue). WebVTT is recognised by its ``WEBVTT`` first line.

    Accepted: a BOM, CRLF or CR line ends, ``,`` or ``.`` before the milliseconds in either format,
    hours omitted, cue settings after the end time, an SRT number or VTT identifier before the time
    line, multi-line cues (lines joined with a space), HTML-ish tags (``<i>``, ``<font ...>``, VTT ``<c>``,
    karaoke timestamps) and ASS overrides (``{\\an8}``) removed, VTT ``<v Name>`` giving the speaker, HTML
    entities (``&amp;``) unescaped in either format, VTT ``NOTE``/``STYLE``/``REGION`` blocks and the header skipped. Empty cues are
    returned with ``text == ""``; overlapping cues are kept. A malformed time line, a cue ending before
    it starts and a block without a time line are problems naming their line.
    """
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    first = next((ln for ln in lines if ln.strip()), "")
    vtt = first.startswith("WEBVTT")
    cues, problems = [], []
    index = 0
    for b, (start_line, block) in enumerate(_blocks(lines)):
        if vtt and b == 0:
            continue  # the WEBVTT header block
        head = block[0].strip()
        if vtt and (head.split(maxsplit=1) or [""])[0] in ("NOTE", "STYLE", "REGION"):
            continue
        at = next((k for k, ln in enumerate(block) if "-->" in ln), None)
        if at is None:  # a mistyped arrow still reads as a (malformed) time line
            at = next((k for k, ln in enumerate(block[:2]) if _TIME_LIKE.search(ln)), None)
        if at is None:
            problems.append((start_line, f"no time line ('START --> END') in the block starting {head[:40]!r}"))
            continue
        index += 1
        line_no = start_line + at
        if at > 1:
            problems.append((line_no, "the time line must be a cue's first line or follow its number / identifier"))
            continue
        m = _TIME_LINE.match(block[at])
        if m is None:
            problems.append((line_no, f"malformed time line {block[at].strip()!r}: expected "
                                      "'HH:MM:SS,mmm --> HH:MM:SS,mmm' (',' or '.', hours optional)"))
            continue
        start, end = _seconds(*m.groups()[:4]), _seconds(*m.groups()[4:])
        if end <= start:
            problems.append((line_no, f"cue ends at {end:.3f} s, not after its start {start:.3f} s"))
            continue
        body, speaker = _clean_cue(block[at + 1:], vtt)
        cues.append(Cue(index=index, start=start, end=end, text=body, speaker=speaker, line=line_no))
    return cues, problems


def _blocks(lines: list[str]):
    """``(first line number, lines)`` of each run of non-blank lines."""
    block, start = [], 0
    for n, line in enumerate(lines, start=1):
        if line.strip():
            if not block:
                start = n
            block.append(line)
        elif block:
            yield start, block
            block = []
    if block:
        yield start, block


def _clean_cue(lines: list[str], vtt: bool) -> tuple[str, str | None]:
    speaker = None
    out = []
    for line in lines:
        if vtt and speaker is None:
            voice = _VOICE.search(line)
            if voice:
                speaker = voice.group(1).strip() or None
        line = _TAG.sub("", _ASS.sub("", line))
        line = " ".join(html.unescape(line).split())  # entities occur in SRT files too
        if line:
            out.append(line)
    return " ".join(out), speaker


SUBTITLE_ENCODINGS = ("utf-8", "cp1252", "latin-1")  # tried in this order


def decode_subtitles(raw: bytes) -> tuple[str | None, str]:
    """A subtitle file's bytes -> ``(text, encoding)``: UTF-8 (BOM optional) first, then cp1252, then
    latin-1, as older SRT files are often Windows-encoded. Bytes with NULs (UTF-16, or not text) give
    ``(None, why)``."""
    if b"\x00" in raw:
        return None, "not a text file in UTF-8, cp1252 or latin-1 (it holds NUL bytes: UTF-16?)"
    for enc in SUBTITLE_ENCODINGS:
        try:
            return raw.decode("utf-8-sig" if enc == "utf-8" else enc), enc
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")


def read_subtitles(file: str | Path) -> tuple[list[Cue], list[tuple[int, str]]]:
    """``parse_subtitles`` of a file decoded by ``decode_subtitles``; a file that cannot be decoded is one
    problem at line 1."""
    text, how = decode_subtitles(Path(file).read_bytes())
    if text is None:
        return [], [(1, how)]
    return parse_subtitles(text)
