"""The answer path as a terminal conversation: `supportbot chat` / `make run` without Slack."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from bot.terminal import AnswerPrinter, clean
from bot.triage import SMALL_TALK_TEXT, THANKS_TEXT, is_small_talk, is_thanks
from knowledge.errors import KnowledgeError
from knowledge.types import Turn

log = logging.getLogger(__name__)

PROMPT = "you> "
EXIT_WORDS = {"exit", "quit", ":q"}


def run_chat(kb, input: TextIO = sys.stdin, output: TextIO = sys.stdout, *, max_history_turns: int = 12) -> int:
    """Answer questions read line by line until EOF or "exit"; returns the number answered.

    Errors the knowledge layer raises on purpose are printed and the chat goes on; so is
    any other exception (logged with its traceback), so a bug never ends the session.
    Ctrl-C while an answer is on its way cancels it; at the prompt it ends the chat
    (KeyboardInterrupt, exit 130 from the CLI). Small
    talk ("hi", "thanks!") is answered as in Slack, without a lookup.
    """
    history: list[Turn] = []
    answered = 0
    interactive = input.isatty() if hasattr(input, "isatty") else False
    print("Ask about the docs (\"exit\" or Ctrl-D to leave).", file=output)
    while True:
        if interactive:
            output.write(PROMPT)
            output.flush()
        try:
            line = input.readline()
        except KeyboardInterrupt:
            if interactive:
                output.write("\n")  # end the prompt's line
            raise
        if not line:
            if interactive:
                output.write("\n")  # Ctrl-D: end the prompt's line
            break
        question = line.strip()
        if not question:
            continue
        if question.lower() in EXIT_WORDS:
            break
        if not interactive:
            print(f"{PROMPT}{clean(question)}", file=output)
        if is_small_talk(question):
            print(f"bot> {THANKS_TEXT if is_thanks(question) else SMALL_TALK_TEXT}\n", file=output)
            continue
        printer = AnswerPrinter(output, prefix="bot> ")
        try:
            answer = kb.ask(question, history=tuple(history), on_delta=printer.on_delta)
        except KeyboardInterrupt:  # Ctrl-C while answering drops that answer; at the prompt it ends the chat
            printer.cancelled()
            continue
        except KnowledgeError as error:
            printer.error(str(error))
            continue
        except Exception as error:  # a bug: say so and keep the conversation (and its history)
            log.exception("The answer failed")
            printer.error(f"The answer failed ({type(error).__name__}); please ask again.")
            continue
        printer.finish(answer)
        print("", file=output)
        output.flush()
        # The question as the knowledge layer cleaned and answered it (bad bytes from stdin are
        # lone surrogates, which the tokenizer rejects when a follow-up searches with them).
        history += [Turn(role="user", text=answer.question), Turn(role="assistant", text=answer.text)]
        history = history[-max_history_turns:]
        answered += 1
    return answered
