"""The `supportbot` command line: index, ask, eval, chat, serve, run, feedback, bench.

Heavy imports (torch, models, Slack) happen inside the commands so `--help`
is instant. Expected failures (`KnowledgeError`, bad settings) print one line
on stderr and exit non-zero; only a real bug shows a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process SIGPIPE ended

DESCRIPTION = """\
Answer questions from your team's documentation, in Slack or the terminal.

Settings come from the environment and a .env file (see .env.example).
Typical first run:  supportbot index  then  supportbot ask "How is data stored?"
"""


log = logging.getLogger("supportbot")

START_UP_BY = "start-up"  # who ran a refresh, as /reindex status shows it
INDEX_BY = "supportbot index"


class SettingsProblem(Exception):
    """Settings that cannot be read; the message is one line naming the setting or file."""


def _load_settings(env_file: str | None):
    """BotSettings from the environment and `env_file` (default: .env when there is one).

    Raises pydantic.ValidationError for an invalid value, SettingsProblem for a value or
    file that cannot even be read (not JSON, not UTF-8, an --env-file that is missing).
    """
    from pydantic_settings import SettingsError

    from bot.settings import BotSettings

    if env_file is not None and (not os.path.exists(env_file) or os.path.isdir(env_file)):
        raise SettingsProblem(f"--env-file {env_file}: no such file")
    path = env_file or ".env"
    try:
        return BotSettings(_env_file=path)
    except SettingsError as error:  # a JSON-valued setting (a list) that is not JSON
        field = re.search(r'field "(\w+)"', str(error))
        name = field.group(1).upper() if field else "a setting"
        cause = f" ({error.__cause__})" if error.__cause__ else ""
        where = f" in {path}" if "DotEnv" in str(error) else ""
        raise SettingsProblem(f"{name}{where}: not valid JSON{cause}") from None
    except UnicodeDecodeError as error:
        line = error.object[:error.start].count(b"\n") + 1
        raise SettingsProblem(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} on line {line})") from None
    except OSError as error:
        raise SettingsProblem(f"{path}: {error.strerror or error}") from None


def _knowledge_base(settings):
    from bot.learning import attach_from_settings
    from knowledge.pipeline import KnowledgeBase

    kb = KnowledgeBase.from_settings(settings)
    attach_from_settings(kb, settings)  # a refresh from here keeps the team's saved answers
    return kb


def _print_json(data: object) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def cmd_index(args: argparse.Namespace, settings) -> int:
    kb = _knowledge_base(settings)
    try:
        # The replicas' refresh lease: a refresh running elsewhere (a replica building the first
        # index, a scheduled one, /reindex) is waited for, then this one brings in what it missed.
        with _refresh_lease(settings, required=False) as runs:
            if runs is None:
                report = kb.refresh(rebuild=args.rebuild, progress=not args.json)
            else:
                from bot.refresher import refresh_under_lease

                report = refresh_under_lease(kb, runs, by=INDEX_BY, rebuild=args.rebuild, progress=not args.json,
                                             purpose="before indexing (Ctrl-C stops waiting)")
    finally:
        kb.close()
    if args.json:
        data = report.to_dict()
        _print_json({key: data[key] for key in (
            "documents", "chunks", "added", "updated", "deleted", "unchanged", "seconds", "failed", "problems")})
    else:
        embedded = report.added + report.updated
        rate = f" ({report.chunks_per_second:.1f} chunks/s embedded)" if embedded else ""
        print(
            f"Indexed {report.documents} documents into {report.chunks} chunks in "
            f"{report.seconds:.1f} s{rate}: "
            f"{report.added} added, {report.updated} updated, {report.deleted} deleted, "
            f"{report.unchanged} unchanged."
        )
        for name, reason in report.failed.items():
            print(f"Source {name!r} failed; its previous chunks were kept: {reason}", file=sys.stderr)
        for name, problems in report.problems.items():
            for problem in problems:
                print(f"Source {name!r}: {problem}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_ask(args: argparse.Namespace, settings) -> int:
    from bot.terminal import AnswerPrinter

    if args.no_rerank:
        settings.reranker_model = ""
    if args.mode:
        settings.retrieval_mode = args.mode
    printer = AnswerPrinter(sys.stdout)
    kb = _knowledge_base(settings)
    try:
        _require_index(kb)
        answer = kb.ask(args.question, on_delta=None if args.json else printer.on_delta)
    finally:
        kb.close()
    if args.json:
        _print_json(answer.to_dict())
    else:
        printer.finish(answer)  # what streamed, the rest of the answer, the note, the sources
    # The passages are shown either way; a script still learns that the model did not answer.
    return EXIT_FAILURE if answer.model_failed else 0


def cmd_eval(args: argparse.Namespace, settings) -> int:
    from knowledge import evaluation
    from knowledge.errors import KnowledgeError

    save_to = Path(args.save_to) if args.save_to else settings.abstention_model_path
    if args.fit_abstention:
        problem = _unsafe_save_path(save_to, args.file)
        if problem:
            print(f"supportbot: --save-to {save_to}: {problem}", file=sys.stderr)
            return EXIT_USAGE
    # Several files are scored as one (e.g. the dev set plus a file of unanswerable
    # questions to fit the abstention model on); read before the models load.
    items = [item for name in args.file for item in evaluation.load_items(Path(name))]
    if not items:
        raise KnowledgeError(f"No eval items in {', '.join(args.file)} (one JSON object a line).")
    kb = _knowledge_base(settings)
    try:
        _require_index(kb)
        if args.compare:
            rows = evaluation.compare(kb, items)
            if args.json:
                _print_json(rows)
            else:
                print(evaluation.format_table(rows))
            return 0
        result = evaluation.evaluate(
            kb, items, mode=args.mode or settings.retrieval_mode,
            rerank=settings.reranking and not args.no_rerank,
        )
        fitted = None
        if args.fit_abstention:
            fitted = evaluation.fit_abstention(kb, result, path=save_to, fitted_on=" + ".join(args.file))
    finally:
        kb.close()
    result.pop("outcomes", None)
    if args.json:
        _print_json({**result, "fitted_abstention": fitted and dataclasses.asdict(fitted)})
    else:
        print(evaluation.format_result(result))
        if args.fit_abstention:
            print(evaluation.format_fitted(fitted, save_to, bot_reads=settings.abstention_model_path))
    return 0


def _unsafe_save_path(path: Path, inputs: Sequence[str]) -> str:
    """Why the abstention model must not be written to `path` ("" when it may): never over an eval file."""
    if any(path.resolve() == Path(name).resolve() for name in inputs):
        return "is one of the eval files; name a separate .json file"
    if path.suffix == ".jsonl" and path.exists():
        return "is an existing .jsonl file (an eval file?); name a separate .json file"
    if path.is_dir():
        return "is a folder; name a .json file"
    return ""


def cmd_chat(args: argparse.Namespace, settings) -> int:
    from bot.chat import run_chat

    kb = _knowledge_base(settings)
    try:
        _check_answerer(kb)
        # A terminal beside running replicas (same DATABASE_URL) builds under their refresh lease too.
        with _refresh_lease(settings, required=False) as runs:
            _ensure_index(kb, progress=True, runs=runs)
        run_chat(kb)
    finally:
        kb.close()
    return 0


def _require_index(kb) -> None:
    """Raise KnowledgeError when nothing is indexed: every answer would say "the docs don't cover this"."""
    from knowledge.errors import KnowledgeError

    if not kb.store.count():
        raise KnowledgeError("The index is empty: run `supportbot index` first "
                             "(it reads the docs KNOWLEDGE_SOURCES names).")


def _ensure_index(kb, *, progress: bool, runs=None) -> None:
    """Build the index when there is none or it cannot serve (built for another model).

    An index whose keywords an older version analysed still serves (dense only):
    `serve` rebuilds it in the background, `supportbot index --rebuild` at once.

    With `runs` (bot.state.refresh_runs.RefreshRuns on DATABASE_URL) the build holds the
    replicas' refresh lease: of the replicas starting on one empty index one builds it, the
    others wait for that run to end and serve what it built (and take over if it dies).
    """
    serves, reason = _index_serves(kb)
    if serves:
        if reason:
            log.warning("%s Dense search only until it is rebuilt (`supportbot index --rebuild`; "
                        "`serve` starts that in the background).", reason)
        return
    if reason:
        log.info("%s Rebuilding it from KNOWLEDGE_SOURCES", reason)
    else:
        log.info("No index yet: building it from KNOWLEDGE_SOURCES")
    if runs is None:
        report = kb.refresh(progress=progress)
    else:
        from bot.refresher import refresh_under_lease

        report = refresh_under_lease(kb, runs, by=START_UP_BY, progress=progress, purpose="before serving",
                                     needed=lambda: not _index_serves(kb, follow=True)[0])
        if report is None:
            log.info("Serving the index another replica built (%d chunks)", kb.status().get("chunks", 0))
            return
    log.info("Indexed %d documents into %d chunks in %.1f s",
             report.documents, report.chunks, report.seconds)
    for name, reason in report.failed.items():
        log.warning("Source %r failed: %s", name, reason)


def _index_serves(kb, *, follow: bool = False) -> tuple[bool, str]:
    """Whether the index can serve as it is, and why it needs a rebuild ("" when it does not).

    `follow`: first serve the collection the serving name points at now (another replica may
    have switched it to the one it rebuilt)."""
    follow_serving = getattr(kb.store, "follow_serving", None) if follow else None
    if follow_serving is not None:
        follow_serving()
    status = kb.status()
    reason = status.get("rebuild_reason", "")
    return bool(status.get("chunks", 0) and (not reason or status.get("serves_until_rebuilt"))), reason


@contextmanager
def _refresh_lease(settings, *, required: bool = True):
    """The replicas' refresh runs (bot.state.refresh_runs.RefreshRuns) on DATABASE_URL, for this
    process; raises StateError when the state database cannot be opened, unless not `required`:
    then it says so and yields None (the refresh runs without the lease)."""
    from bot.state import Database, StateError, replica_id
    from bot.state.refresh_runs import RefreshRuns

    try:
        database = Database.from_settings(settings)
    except StateError as error:
        if required:
            raise
        log.warning("%s: refreshing without the replicas' refresh lease (a replica may refresh at the same time)",
                    error)
        database = None
    try:
        yield database and RefreshRuns(database=database, holder=replica_id(),
                                       lease_seconds=settings.claim_lease_seconds)
    finally:
        if database is not None:
            database.close()


def _check_answerer(kb) -> None:
    """Say at start, in one line, when answers cannot be written (bad key, model or URL);
    and build the language detector now rather than on the first question."""
    problem = kb.check_answerer()
    if problem:
        log.warning("%s Answers will list the best passages until this is fixed.", problem)
    kb.language_detector.warm_up()


def _has_slack_credentials(settings) -> bool:
    return bool(settings.slack_bot_token.get_secret_value()) and bool(
        settings.slack_app_token.get_secret_value() or settings.slack_signing_secret.get_secret_value()
    )


def cmd_serve(args: argparse.Namespace, settings) -> int:
    from bot.access import check_source_access
    from bot.server import serve

    check_source_access(settings.source_access, settings.knowledge_sources)  # before any indexing
    kb = _knowledge_base(settings)
    try:
        _check_answerer(kb)
        with _refresh_lease(settings) as runs:  # replicas starting together build the index once
            _ensure_index(kb, progress=settings.log_format != "json", runs=runs)
        serve(settings, kb)
    finally:
        kb.close()
    return 0


def cmd_run(args: argparse.Namespace, settings) -> int:
    """Index when needed, then serve Slack if credentials are set, else chat here."""
    if _has_slack_credentials(settings):
        return cmd_serve(args, settings)
    print(
        "No Slack credentials (SLACK_BOT_TOKEN with SLACK_APP_TOKEN or SLACK_SIGNING_SECRET): "
        "starting the terminal chat instead. See README › Create the Slack app.",
        file=sys.stderr,
    )
    return cmd_chat(args, settings)


def cmd_feedback(args: argparse.Namespace, settings) -> int:
    from bot.state import Database, Records, format_feedback_report

    database = Database.from_settings(settings)
    try:
        print(format_feedback_report(Records(database=database), limit=args.limit))
    finally:
        database.close()
    return 0


def cmd_answers(args: argparse.Namespace, settings) -> int:
    """Saved answers (replies the bot learned from its threads): list, remove one, export all."""
    from bot.learning import format_saved_answers, saved_answer_dict
    from bot.state import Database
    from bot.state.saved_answers import ACTIVE, PENDING, STATUSES, SavedAnswers

    database = Database.from_settings(settings)
    store = SavedAnswers(database=database)
    try:
        if args.action == "remove":
            return _remove_saved_answer(store, args.id, settings)
        statuses = STATUSES if args.all or args.action == "export" else (ACTIVE, PENDING)
        answers = store.list(statuses)
        if args.action == "export":
            for saved in answers:
                print(json.dumps(saved_answer_dict(saved), ensure_ascii=False))
            return 0
        usage = store.usage([saved.id for saved in answers])
        if args.json:
            _print_json([{**saved_answer_dict(saved), "usage": usage[saved.id].__dict__ if saved.id in usage else {}}
                         for saved in answers])
        else:
            print(format_saved_answers(answers, usage))
        return 0
    finally:
        database.close()


def _remove_saved_answer(store, saved_id: str, settings) -> int:
    from bot.learning import TEAM_ANSWERS_SOURCE, documents_of
    from bot.state.saved_answers import REMOVED
    from knowledge.errors import StoreError

    saved = store.get(saved_id)
    if saved is None:
        print(f"supportbot: no saved answer with id {saved_id!r} (see `supportbot answers list --all`)",
              file=sys.stderr)
        return EXIT_FAILURE
    store.set_status(saved_id, REMOVED, by="cli")
    print(f"Removed saved answer {saved_id}: {saved.question}")
    try:
        kb = _knowledge_base(settings)
    except StoreError as error:
        print(f"The index could not be opened ({error}); the bot drops the answer from it at its next refresh "
              "(or /reindex).")
        return 0
    try:
        kb.sync_documents(documents_of(store), source_names=sorted({TEAM_ANSWERS_SOURCE, *store.source_names()}))
    finally:
        kb.close()
    print("The index no longer holds it.")
    return 0


def cmd_bench(args: argparse.Namespace, settings) -> int:
    from benchmarks.bench import format_remote_report, format_report, run_bench, run_remote_bench

    if args.remote:
        result = run_remote_bench(settings=settings, corpus=Path(args.corpus) if args.corpus else None,
                                  quick=args.quick, progress=not args.json)
        if args.json:
            _print_json(result)
        else:
            print(format_remote_report(result))
        return 0
    result = run_bench(
        settings=settings,
        shape=args.shape,
        corpus=Path(args.corpus) if args.corpus else None,
        quick=args.quick,
        progress=not args.json,
    )
    if args.json:
        _print_json(result)
    else:
        print(format_report(result))
    return 0


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supportbot", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--env-file", help="settings file to read (default: .env when there is one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable, help_text: str, description: str | None = None):
        p = sub.add_parser(name, help=help_text, description=description or help_text)
        p.set_defaults(func=func)
        return p

    p = add("index", cmd_index, "build or refresh the index from KNOWLEDGE_SOURCES",
            "Read the sources, chunk them by section, embed new or changed chunks and update "
            "the Milvus index in place (unchanged chunks are not re-embedded). It holds the "
            "refresh lease the bot replicas share (DATABASE_URL): when a refresh runs elsewhere "
            "(a replica building the first index, a scheduled refresh, /reindex) it says so, "
            "waits for it to end, then refreshes what that one missed.")
    p.add_argument("--rebuild", action="store_true",
                   help="build a fresh collection and switch to it atomically")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")

    p = add("ask", cmd_ask, "answer one question from the terminal",
            "Retrieve, rerank and answer one question with its cited sources. When the "
            "language model fails, the passages are printed instead and the exit status is 1.")
    p.add_argument("question", help="the question, in quotes")
    p.add_argument("--json", action="store_true",
                   help="print the whole Answer (citations, candidates, timings) as JSON")
    p.add_argument("--no-rerank", action="store_true", help="skip the reranker")
    p.add_argument("--mode", choices=["hybrid", "dense", "bm25"], help="retrieval mode")

    p = add("eval", cmd_eval, "score retrieval on an eval file (recall, MRR, abstention)",
            "Score the current index on a JSONL eval file (format: docs/eval/README.md): "
            "recall@10 before reranking, recall@3 after, MRR@10 and abstention.")
    p.add_argument("file", nargs="+", help="eval JSONL file(s), scored together")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--compare", action="store_true",
                   help="dense, BM25 and hybrid, each with and without reranking, side by side")
    p.add_argument("--no-rerank", action="store_true", help="score without the reranker")
    p.add_argument("--mode", choices=["hybrid", "dense", "bm25"], help="retrieval mode")
    # A flag, not an option with a value: `--fit-abstention a.jsonl b.jsonl` once saved over a.jsonl.
    p.add_argument("--fit-abstention", action="store_true",
                   help="fit the abstention model on the files' answerable and unanswerable "
                        "items, print it and save it where the bot reads it (ABSTENTION_MODEL, "
                        "default DATA_DIR/abstention.json)")
    p.add_argument("--save-to", metavar="PATH",
                   help="with --fit-abstention: save the model here instead (never over an eval "
                        "file); the bot uses it once ABSTENTION_MODEL names it")

    add("chat", cmd_chat, "talk to the bot in the terminal (no Slack needed)",
        "The same answer path as in Slack, as a conversation in the terminal; follow-ups "
        "use the earlier turns. Ctrl-D or 'exit' ends it.")
    add("serve", cmd_serve, "run the Slack bot (Socket Mode or HTTP Events API)",
        "Socket Mode when SLACK_APP_TOKEN is set, the HTTP Events API when "
        "SLACK_SIGNING_SECRET is set. Builds the index first when there is none; replicas "
        "sharing DATABASE_URL build it once (the others wait for that build, then serve it).")
    add("run", cmd_run, "index if needed, then serve Slack (or chat when no Slack tokens are set)")

    p = add("feedback", cmd_feedback, "recent 👍/👎 feedback and questions the docs did not answer")
    p.add_argument("--limit", type=_positive_int, default=20, help="rows per list (default 20)")

    p = add("answers", cmd_answers, "answers the bot learned from its Slack threads: list, remove, export",
            "Replies people marked in the bot's threads (RESOLVED_REACTION or the 'Save as answer' shortcut) "
            "that it cites as the team's answers. `list` shows those in use and pending review, with how "
            "often each was cited and the 👍/👎 those answers got; `remove ID` stops using one; `export` "
            "prints every saved answer as JSON lines.")
    p.add_argument("action", choices=["list", "remove", "export"], help="what to do")
    p.add_argument("id", nargs="?", help="the saved answer's id (for remove)")
    p.add_argument("--all", action="store_true", help="list: also removed and rejected ones")
    p.add_argument("--json", action="store_true", help="list: print JSON")

    p = add("bench", cmd_bench, "measure indexing, reranking and answer latency on this machine",
            "Times the tutorial's loops against the product's fast path in one run.")
    p.add_argument("--shape", choices=["qwen3-0.6b"],
                   help="use random-weight models of this shape instead of the configured ones")
    p.add_argument("--corpus", help="folder of Markdown files to index (default: the FAQ folder)")
    p.add_argument("--quick", action="store_true", help="a shorter run (under ten minutes on 2 cores)")
    p.add_argument("--remote", action="store_true",
                   help="only the remote-models row: answer-ready latency and RSS of a bot process whose "
                   "models are on EMBEDDING_BASE_URL / RERANKER_BASE_URL")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is cmd_answers and args.action == "remove" and not args.id:
        parser.error("answers remove needs the saved answer's ID (see `supportbot answers list`)")
    if getattr(args, "func", None) is cmd_answers and args.action != "remove" and args.id:
        parser.error(f"answers {args.action} takes no ID (only remove does)")
    if getattr(args, "func", None) is cmd_eval and args.save_to and not args.fit_abstention:
        parser.error("--save-to is where --fit-abstention saves the model: give both")
    from pydantic import ValidationError

    from knowledge.errors import KnowledgeError

    try:
        settings = _load_settings(args.env_file)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in error.errors()
        )
        print(f"supportbot: invalid settings: {problems}", file=sys.stderr)
        return EXIT_USAGE
    except SettingsProblem as error:
        print(f"supportbot: invalid settings: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        _configure_logging(settings, verbose=args.verbose)
    except ValueError as error:  # an unknown LOG_LEVEL
        print(f"supportbot: invalid settings: LOG_LEVEL: {error}", file=sys.stderr)
        return EXIT_USAGE
    _warn_misspelled(args.env_file or ".env")
    try:
        code = args.func(args, settings)
        sys.stdout.flush()  # here, so a closed pipe is caught below rather than at exit
        return code
    except KnowledgeError as error:
        print(f"supportbot: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        if args.func is cmd_index:  # whatever was written stays; the next run picks up from there
            print("supportbot: interrupted: run `supportbot index` again to finish", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `supportbot eval --compare … | head -1`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_BROKEN_PIPE


def _warn_misspelled(env_file: str) -> None:
    """One warning per .env line or environment variable that is probably a misspelled setting."""
    from bot.settings import BotSettings
    from knowledge.settings import misspelled_settings

    for name, meant in misspelled_settings(BotSettings, env_file, os.environ):
        log.warning("%s is not a setting, so it is ignored: did you mean %s?", name, meant)


def _configure_logging(settings, *, verbose: bool) -> None:
    """Plain or JSON lines at LOG_LEVEL, with every configured secret redacted."""
    from urllib.parse import urlsplit

    from bot.logging_setup import configure_logging

    secrets = [
        settings.slack_bot_token, settings.slack_app_token, settings.slack_signing_secret,
        settings.openai_api_key, settings.milvus_token,
        settings.embedding_api_key, settings.reranker_api_key,
    ]
    values = [secret.get_secret_value() for secret in secrets]
    values += [urlsplit(url).password or "" for url in (
        settings.milvus_uri, settings.embedding_base_url, settings.reranker_base_url)]
    configure_logging(
        level="DEBUG" if verbose else settings.log_level,
        json_format=settings.log_format == "json",
        secrets=[value for value in values if value],
        log_bodies=settings.log_questions,
        question_key="\0".join(secret.get_secret_value() for secret in (
            settings.slack_signing_secret, settings.slack_bot_token, settings.slack_app_token)),
    )


if __name__ == "__main__":
    sys.exit(main())
