"""What the terminal shows of an answer (`supportbot ask` and `chat`).

Two rules: nothing from the docs or the model may drive the terminal (escape sequences
that clear the screen, set the window title or hide text; other control characters), and
the text shown while the model streams is the answer that is kept, whose citation
markers `knowledge.pipeline.normalise_markers` checks only once the whole text is in
(a marker naming no listed passage is dropped with the space before it).
"""

from __future__ import annotations

import re
from typing import TextIO

from knowledge.pipeline import CITATION_MARKER, CONTROL_CHARS, LONE_SURROGATES
from knowledge.types import Answer

# ANSI/VT escape sequences: CSI (ESC [ … or its C1 byte), strings ended by BEL or ST (OSC
# ESC ] … sets the window title; DCS, SOS, PM, APC), and the short ESC forms (ESC c resets
# the terminal, ESC ( B picks a character set).
_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d-\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[ -/]*[0-OQ-WYZ\\`-~]"
)
# What may still become one of those once more text arrives.
_ESCAPE_START = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*|(?:\x1b[\]PX^_]|[\x90\x98\x9d-\x9f])[^\x07\x1b\x9c]*\x1b?|\x1b[ -/]*"
)
_ESCAPE_OPENERS = "\x1b\x9b\x90\x98\x9d\x9e\x9f"

# The pipeline's markers (CITATION_MARKER and its full-width form), complete or not yet.
_MARKER_START = re.compile(r"\[[\d\s,\-–]*")
_WIDE_MARKER = re.compile(r"[【［]\s*\d")
_WIDE_MARKER_START = re.compile(r"[【［]\s*")
_SURE_MARKER = "1"  # the model is only asked with at least one passage, so [1] is always kept


def clean(text: str) -> str:
    """`text` safe to print: escape sequences and control characters (but newline and tab) removed."""
    # Lone surrogates become U+FFFD: a strict UTF-8 stdout cannot print them.
    return CONTROL_CHARS.sub("", LONE_SURROGATES.sub("\ufffd", _ESCAPE.sub("", text)))


def format_sources(answer: Answer) -> str:
    """Numbered sources matching the answer's [n] markers, one per line ("" when none)."""
    lines = [f"  [{c.number}] {c.breadcrumb}\n      {c.url}" for c in sorted(answer.citations, key=lambda c: c.number)]
    return clean("Sources:\n" + "\n".join(lines)) if lines else ""


class AnswerPrinter:
    """Prints one answer: the model's text as it streams (`on_delta`), then the rest (`finish`).

    While streaming it prints only text the kept answer starts with: it stops before a
    marker that normalisation could change ([2] when fewer passages were listed, [0],
    【1】) and `finish` prints the rest from the normalised answer. Spaces wait for what
    follows them (a dropped marker takes the space before it along); an escape sequence
    split between deltas waits for its end, so it is removed whole.
    """

    def __init__(self, output: TextIO, *, prefix: str = "") -> None:
        self._output = output
        self._prefix = prefix  # "bot> ": printed with the first text, so an error line stands alone
        self._pending = ""  # streamed, not yet judged
        self._shown = ""  # streamed and printed: a prefix of the kept answer
        self._stopped = False  # a marker only the whole answer can settle: the rest comes at finish
        self._started = False

    def on_delta(self, delta: str) -> None:
        if self._stopped or not delta:
            return
        self._pending += delta
        ready = self._judge(self._pending)
        if ready:
            self._write(self._pending[:ready])
            self._shown += self._pending[:ready]
            self._pending = self._pending[ready:]

    def finish(self, answer: Answer) -> None:
        """The rest of the answer, its note and its sources."""
        text = answer.text
        if self._shown and text.startswith(self._shown):
            rest = text[len(self._shown):].rstrip()
        else:  # nothing streamed, or the model failed mid-answer and passages replace it
            rest = ("\n" if self._shown else "") + text.strip()
        self._write(rest)
        self._output.write("\n")
        if answer.note:
            self._output.write(f"({clean(answer.note)})\n")
        sources = format_sources(answer)
        if sources:
            self._output.write(sources + "\n")
        self._output.flush()

    def error(self, message: str) -> None:
        """One "(error) …" line, on a line of its own."""
        self._own_line(f"(error) {clean(message)}\n")

    def cancelled(self) -> None:
        """The answer was abandoned (Ctrl-C): say so on a line of its own."""
        self._own_line("(cancelled)\n\n")

    def _own_line(self, text: str) -> None:
        if self._started:  # end the streamed text's line first
            self._output.write("\n")
        self._output.write(text)
        self._output.flush()

    def _write(self, text: str) -> None:
        text = clean(text)
        if not text:
            return
        if not self._started:
            self._started = True
            text = self._prefix + text
        self._output.write(text)
        self._output.flush()

    def _judge(self, text: str) -> int:
        """How much of `text` normalisation cannot change (and is whole); sets _stopped at a marker it might."""
        ready = index = 0
        while index < len(text):
            char = text[index]
            if char in " \t\n":  # goes out with the next text that goes out (none: finish drops it)
                index += 1
                continue
            if char == "[":
                marker = CITATION_MARKER.match(text, index)
                if marker and marker.group(1) == _SURE_MARKER:
                    index = ready = marker.end()
                    continue
                if marker:
                    self._stopped = True
                    return ready
                if _MARKER_START.fullmatch(text, index):
                    return ready  # "[1" may still become a marker
                index = ready = index + 1  # not a marker: a link, a list
                continue
            if char in "【［":
                if _WIDE_MARKER.match(text, index):
                    self._stopped = True  # full-width markers are rewritten: settled at finish
                    return ready
                if _WIDE_MARKER_START.fullmatch(text, index):
                    return ready
                index = ready = index + 1
                continue
            if char in _ESCAPE_OPENERS:
                if char == "\x1b" and CITATION_MARKER.match(text, index + 1):
                    self._stopped = True  # ESC [7]: a marker normalisation may drop, not a sequence
                    return ready
                if char == "\x1b" and _MARKER_START.fullmatch(text, index + 1):
                    return ready
                sequence = _ESCAPE.match(text, index)
                if sequence:
                    index = ready = sequence.end()
                    continue
                if _ESCAPE_START.fullmatch(text, index):
                    return ready  # its end is still to come
            if char == "\x00":  # normalisation's own placeholder: let it settle the text
                self._stopped = True
                return ready
            index = ready = index + 1
        return ready
