"""Is a channel message a question worth answering? A cheap rule, no model call.

Used where the bot answers without being mentioned (AUTO_ANSWER_CHANNELS), so
it errs on the side of silence: greetings, thanks, emoji, bare links and
statements are skipped; a "?" (or "？"), an English question or request
opener ("how do I…", "can someone…", "explain…") or a Chinese question word
(什么, 怎么, 如何, 吗…) makes a question. `is_chitchat` alone keeps "thanks!"
under an answer from being answered in threads.
"""

from __future__ import annotations

import re

MIN_LETTERS = 3  # "ok?" is not worth a retrieval

# What the bot says to small talk said to it (Slack and the terminal chat alike).
SMALL_TALK_TEXT = "👋 I answer questions from the docs, with their sources: ask me one in your own words."
THANKS_TEXT = "You're welcome! Ask me anything else about the docs."

# Slack markup that carries no words of the question.
_MARKUP = re.compile(r"<[@#!][^>]*>|<https?://[^>]*>|https?://\S+|:[a-z0-9_+'-]+:", re.IGNORECASE)
# Pictographs, dingbats, symbols and the joiners/selectors emoji sequences use.
_EMOJI = re.compile("[\u2190-\u2bff\u2600-\u27bf\U0001f000-\U0001faff\ufe0f\u200d]")
_EMOJI_CODE = re.compile(r":[a-z0-9_+'-]+:", re.IGNORECASE)
_LETTER = re.compile(r"[^\W\d_]")
_CJK = re.compile(r"[\u3400-\u9fff]")

# Thanks and acknowledgements (is_thanks), then the other small talk; together the greeting words.
_THANKS_WORDS = (
    r"thanks?(?: you)?(?: (?:so|very) much)?|thx|ty|tysm|cheers|much appreciated|appreciate it|"
    r"great|awesome|perfect|nice|cool|got it|makes sense|(?:that |it )?(?:works|worked|helps|helped)(?: now)?"
)
_GREETING_WORDS = (
    r"hi|hello|hey|hiya|yo|howdy|morning|good (?:morning|afternoon|evening|night)|gm|"
    rf"{_THANKS_WORDS}|ok(?:ay)?|welcome|bye|see you|cya|lol|"
    r"done|sounds good|np|no problem|will do|\+1"
)
_ADDRESSEE = r"(?:all|everyone|everybody|team|folks|guys|y'?all|there|again|a lot|both|so much)"
_CHITCHAT = re.compile(
    rf"^(?:(?:{_GREETING_WORDS})(?:[\s,]+{_ADDRESSEE})*[\s,.!~]*)+$", re.IGNORECASE
)
_ZH_CHITCHAT = re.compile(
    r"^(?:大家好|你好|您好|早上好|早安|晚上好|晚安|谢谢(?:大家|你|您)?|多谢|感谢(?:大家)?|好的|收到|嗯+|哈+|辛苦了)[\s，,。.!！~～]*$"
)
_LEADING_GREETING = re.compile(rf"^(?:{_GREETING_WORDS})(?:[\s,]+{_ADDRESSEE})?[\s,.!:;—-]+", re.IGNORECASE)

# Follow-ups often lead with a connector: "and what about ARM", "also, which version…".
_LEADING_CONNECTOR = re.compile(r"^(?:and|also|so|but|then|plus|or|btw|by the way)\b[\s,]*", re.IGNORECASE)

_OPENERS = re.compile(
    r"^(?:how|what|what's|whats|why|when|where|which|who|whom|whose|"
    r"can|could|should|would|will|shall|may|is|are|am|was|were|does|do|did|has|have|had|"
    r"isn't|aren't|doesn't|don't|didn't|can't|cannot|won't|"
    r"any(?:one|body)?|is there|are there|explain|describe|tell me|show me|help|"
    r"i (?:need|want) to (?:know|understand)|i(?:'m| am) (?:trying|looking|wondering)|"
    r"i (?:can't|cannot|couldn't) (?:find|figure|get|understand)|wondering|looking for|need help)\b",
    re.IGNORECASE,
)
_INNER = re.compile(
    r"\b(?:how (?:do|does|can|to|should)|what(?:'s| is| are) the|is there (?:a|any) way|"
    r"any(?:one|body) (?:know|knows|have|has|seen)|does any(?:one|body)|any idea|not sure (?:how|why|what|whether))\b",
    re.IGNORECASE,
)
_ZH_QUESTION = re.compile(
    r"什么|怎么|怎样|如何|为什么|为何|哪|几|多少|是否|能否|可否|有没有|是不是|能不能|可不可以|会不会|请问|求助|吗|呢[\s。.]*$|么[\s。.]*$"
)


def _words(text: str) -> str:
    """The text without Slack markup, emoji and extra spaces."""
    text = _EMOJI.sub(" ", _MARKUP.sub(" ", text or ""))
    return " ".join(text.split())


def is_chitchat(text: str) -> bool:
    """True for greetings, thanks, acknowledgements, emoji and bare links: nothing to answer."""
    words = _words(text)
    if len(_LETTER.findall(words)) < MIN_LETTERS and len(_CJK.findall(words)) < 2:
        return True
    return bool(_CHITCHAT.match(words) or _ZH_CHITCHAT.match(words))


def is_small_talk(text: str) -> bool:
    """True for greetings, thanks and acknowledgements, or emoji alone: nothing to look
    up even when said to the bot. Unlike is_chitchat, a short question ("GC?") is not small talk, and
    empty text is not either (the knowledge layer asks for a question)."""
    words = _words(text)
    if not text.strip() or "?" in words or "？" in words:
        return False
    if not re.search(r"\w", words):  # 👍 or :pray: alone; control characters or a bare link are not
        return bool(_EMOJI.search(text) or _EMOJI_CODE.search(text))
    return bool(_CHITCHAT.match(words) or _ZH_CHITCHAT.match(words))


_THANKS = re.compile(rf"^(?:{_THANKS_WORDS}|谢谢|多谢|感谢|辛苦)", re.IGNORECASE)


def is_thanks(text: str) -> bool:
    """True for small talk that thanks or acknowledges ("thanks!", "perfect, works now"), not a greeting."""
    return is_small_talk(text) and bool(_THANKS.match(_words(text)))


def looks_like_question(text: str) -> bool:
    """True when `text` reads as a question or a request for help (see the module docstring)."""
    if is_chitchat(text):
        return False
    words = _words(text)
    if "?" in words or "？" in words:
        return True
    if _ZH_QUESTION.search(words):
        return True
    body = _LEADING_GREETING.sub("", words, count=1)  # "hi all, how do I …"
    body = _LEADING_CONNECTOR.sub("", body, count=1)  # "and what about …"
    return bool(_OPENERS.match(body) or _INNER.search(body))
