"""Retrieval quality over an eval file: recall@10, recall@3, MRR@10, abstention.

Eval format and hit rule: shared/eval/README.md. A passage is a hit for an
expected entry when its source path ends with `source` and its text contains
`contains`, both after `normalise`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from knowledge.errors import KnowledgeError
from knowledge.expansion import doc_words_query
from knowledge.rewrite import standalone_query
from knowledge.types import Candidate, Chunk, Turn

DEFAULT_COMPARE = (
    ("dense", False), ("dense", True),
    ("bm25", False), ("bm25", True),
    ("hybrid", False), ("hybrid", True),
)
_SPACES = re.compile(r"\s+")
_METRIC_KEYS = ("recall@10", "recall@3", "mrr@10", "abstain_correct", "false_abstain")


@dataclass(frozen=True)
class Expected:
    source: str
    contains: str


@dataclass(frozen=True)
class EvalItem:
    id: str
    lang: str
    question: str
    expected: tuple[Expected, ...]
    history: tuple[Turn, ...] = ()  # earlier turns: the question is a follow-up
    kind: str = ""  # optional label (faq, support, ...): figures are also given per kind

    @property
    def answerable(self) -> bool:
        return bool(self.expected)


def load_items(path: Path | str) -> list[EvalItem]:
    """Read a JSONL eval file. Raises KnowledgeError naming the bad line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise KnowledgeError(f"Cannot read eval file {path}: {error.strerror or error}.") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            items.append(
                EvalItem(
                    id=str(data.get("id") or f"line{number}"),
                    lang=str(data.get("lang") or "en"),
                    question=str(data["question"]),
                    expected=tuple(
                        Expected(source=str(e["source"]), contains=str(e["contains"]))
                        for e in data.get("expected") or ()
                    ),
                    history=tuple(_turn(t) for t in data.get("history") or ()),
                    kind=str(data.get("kind") or ""),
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise KnowledgeError(
                f"{path}:{number}: not a valid eval item ({type(error).__name__}: {error})."
            ) from None
    return items


def _turn(value) -> Turn:
    """A history entry: a plain string is an earlier user message."""
    if isinstance(value, str):
        return Turn(role="user", text=value)
    return Turn(role=value["role"], text=str(value["text"]))


def normalise(text: str) -> str:
    """Lower-case, delete ` and *, fold every run of white space into one space."""
    return _SPACES.sub(" ", text.lower().replace("`", "").replace("*", ""))


def is_hit(chunk: Chunk, item: EvalItem) -> bool:
    """True when the chunk matches any of the item's expected entries."""
    source = normalise(chunk.source)
    text = normalise(chunk.text)
    return any(
        source.endswith(normalise(e.source)) and normalise(e.contains) in text
        for e in item.expected
    )


def first_hit_rank(candidates: Sequence[Candidate], item: EvalItem, k: int) -> int | None:
    """1-based position of the first relevant candidate among the first k, else None."""
    for rank, candidate in enumerate(candidates[:k], start=1):
        if is_hit(candidate.chunk, item):
            return rank
    return None


def final_order(result) -> list[Candidate]:
    """The ranking after reranking: the top n as reranked, then the rest in retrieval order."""
    top = list(result.reranked_top_n)
    shown = {c.chunk.id for c in top}
    return top + [c for c in result.candidates_top_k if c.chunk.id not in shown]


def score_items(outcomes: Sequence[dict]) -> dict:
    """Metrics over per-item outcomes (see `evaluate` for the keys)."""
    answerable = [o for o in outcomes if o["answerable"]]
    unanswerable = [o for o in outcomes if not o["answerable"]]

    def share(values: Iterable[bool], total: int) -> float | None:
        return round(sum(values) / total, 4) if total else None

    return {
        "n": len(outcomes),
        "recall@10": share((o["rank_before"] is not None for o in answerable), len(answerable)),
        "recall@3": share(
            (o["rank_after"] is not None and o["rank_after"] <= 3 for o in answerable),
            len(answerable),
        ),
        "mrr@10": (
            round(sum(1 / o["rank_after"] if o["rank_after"] else 0.0 for o in answerable)
                  / len(answerable), 4)
            if answerable else None
        ),
        "abstain_correct": share((o["abstained"] for o in unanswerable), len(unanswerable)),
        "false_abstain": share((o["abstained"] for o in answerable), len(answerable)),
    }


def outcome(item: EvalItem, result, abstained: bool) -> dict:
    """What one item's retrieval produced, for scoring and the misses list."""
    order = final_order(result)
    return {
        "id": item.id,
        "lang": item.lang,
        "kind": item.kind,
        "question": item.question,
        "answerable": item.answerable,
        # recall@10 counts retrieval before reranking; recall@3 and MRR@10 the final order.
        "rank_before": first_hit_rank(result.candidates_top_k, item, 10) if item.answerable else None,
        "rank_after": first_hit_rank(order, item, 10) if item.answerable else None,
        "abstained": abstained,
        "top": [f"{c.chunk.source} › {' › '.join(c.chunk.heading_path)}" for c in order[:3]],
        "best_score": best_score(result),
    }


def best_score(result) -> float | None:
    """The score abstention is decided on: best rerank score, else best dense score."""
    rerank = [c.rerank_score for c in result.reranked_top_n if c.rerank_score is not None]
    if rerank:
        return max(rerank)
    dense = [c.dense_score for c in result.candidates_top_k if c.dense_score is not None]
    return max(dense) if dense else None


def evaluate(
    kb, items: Sequence[EvalItem], *, mode: str | None = None, rerank: bool | None = None,
    rewrite: bool = True,
) -> dict:
    """Retrieval metrics for the items, overall and per language, plus the misses.

    Keys: n, recall@10, recall@3, mrr@10, abstain_correct, false_abstain,
    by_lang {lang: same metrics}, misses [...], mode, rerank, ms_per_query,
    threshold (choose_threshold's suggestion for this mode and reranking).
    """
    outcomes = run_items(kb, items, mode=mode, rerank=rerank, rewrite=rewrite)
    reranked = _rerank_on(kb, rerank)
    summary = summarise(outcomes, mode=mode or kb.settings.retrieval_mode, rerank=reranked)
    summary["threshold"] = choose_threshold(outcomes, score="rerank" if reranked else "dense")
    summary["outcomes"] = outcomes
    model = getattr(kb.retriever, "abstention", None)
    summary["abstention"] = model.describe() if model is not None else "thresholds"
    return summary


def fit_abstention(kb, result: dict, *, path=None, fitted_on: str = ""):
    """Fit the abstention model on an evaluate() result's outcomes, save it (default:
    ABSTENTION_MODEL) and make the knowledge base use it. Returns the model, or None
    when the items hold no unanswerable (or no answerable) question."""
    from knowledge.abstention import fit

    model = fit(
        result["outcomes"], score="rerank" if result["rerank"] else "dense",
        model_id=getattr(kb.retriever.embedder, "model_id", ""), fitted_on=fitted_on,
    )
    if model is None:
        return None
    model.save(path or kb.settings.abstention_model_path)
    kb.retriever.abstention = model
    return model


def run_items(
    kb, items: Sequence[EvalItem], *, mode: str | None, rerank: bool | None, rewrite: bool = True
) -> list[dict]:
    """Retrieve every item and record its outcome.

    A follow-up item (with history) searches with the standalone query `ask()` would
    use (`rewrite`, the default), or with the bare question (rewrite=False). No
    answer is written; a rewrite may call the model when one is configured.
    """
    outcomes = []
    for item in items:
        started = time.perf_counter()
        query = item.question
        if rewrite and item.history:
            query = standalone_query(item.question, item.history, answerer=kb.answerer)
        answerer = getattr(kb, "answerer", None)
        query = doc_words_query(query, answerer=answerer, enabled=kb.settings.doc_rewrite)
        result = kb.retriever.retrieve(query, mode=mode, rerank=rerank)
        elapsed = (time.perf_counter() - started) * 1000
        entry = outcome(item, result, kb.retriever.should_abstain(result))
        entry["ms"] = elapsed
        if hasattr(kb.retriever, "signals"):  # abstention signals, for --fit-abstention
            entry["signals"] = kb.retriever.signals(result)
        outcomes.append(entry)
    return outcomes


def summarise(outcomes: Sequence[dict], *, mode: str, rerank: bool) -> dict:
    summary = score_items(outcomes)
    langs = sorted({o["lang"] for o in outcomes})
    summary["by_lang"] = {
        lang: score_items([o for o in outcomes if o["lang"] == lang]) for lang in langs
    }
    kinds = sorted({o.get("kind") for o in outcomes if o.get("kind")})
    if kinds:
        summary["by_kind"] = {
            kind: score_items([o for o in outcomes if o.get("kind") == kind]) for kind in kinds
        }
    summary["misses"] = [_miss(o) for o in outcomes if _is_miss(o)]
    summary["mode"] = mode
    summary["rerank"] = rerank
    summary["ms_per_query"] = (
        round(sum(o["ms"] for o in outcomes) / len(outcomes), 1) if outcomes and "ms" in outcomes[0] else None
    )
    return summary


def _is_miss(o: dict) -> bool:
    if not o["answerable"]:
        return not o["abstained"]
    return o["abstained"] or o["rank_after"] is None or o["rank_after"] > 3


def _miss(o: dict) -> dict:
    if not o["answerable"]:
        why = "answered an unanswerable question"
    elif o["abstained"]:
        why = "declined an answerable question"
    elif o["rank_after"] is None:
        why = "no relevant passage in the top 10"
    else:
        why = f"first relevant passage at rank {o['rank_after']}"
    return {
        "id": o["id"], "lang": o["lang"], "question": o["question"], "why": why,
        "rank_before": o["rank_before"], "rank_after": o["rank_after"],
        "best_score": o["best_score"], "top": o["top"],
    }


def _rerank_on(kb, rerank: bool | None) -> bool:
    return kb.retriever.reranker is not None and (rerank is None or rerank)


def compare(kb, items: Sequence[EvalItem], settings_list: Sequence[tuple[str, bool]] | None = None) -> list[dict]:
    """Evaluate each (mode, rerank) pair over the same index; rows for `format_table`.

    Pairs asking for reranking are skipped when the knowledge base has no reranker.
    ms_per_query is retrieval (search, rerank, expansion) with query vectors cached.
    """
    pairs = list(settings_list or DEFAULT_COMPARE)
    if any(mode != "bm25" for mode, _ in pairs):
        # Embed every question once up front (the embedder caches queries), so no
        # mode's ms_per_query carries the embedding the others then get for free.
        for item in items:
            kb.retriever.embedder.embed_query(item.question)
    rows = []
    for mode, rerank in pairs:
        if rerank and kb.retriever.reranker is None:
            continue
        result = evaluate(kb, items, mode=mode, rerank=rerank)
        row = {"mode": mode, "rerank": rerank, "n": result["n"]}
        row.update({key: result[key] for key in _METRIC_KEYS})
        row["ms_per_query"] = result["ms_per_query"]
        row["by_lang"] = result["by_lang"]
        if "by_kind" in result:
            row["by_kind"] = result["by_kind"]
        rows.append(row)
    return rows


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width side-by-side table of compare() rows: all items, then one line per language."""
    columns = ["mode", "rerank", "lang", "n", *_METRIC_KEYS, "ms_per_query"]
    lines_of = []
    for row in rows:
        lines_of.append({**row, "lang": "all"})
        for lang, metrics in sorted((row.get("by_lang") or {}).items()):
            lines_of.append({"mode": "", "rerank": "", "lang": lang, **metrics})
        for kind, metrics in sorted((row.get("by_kind") or {}).items()):
            lines_of.append({"mode": "", "rerank": "", "lang": kind, **metrics})
    cells = [[_cell(line.get(col)) if line.get(col) != "" else "" for col in columns]
             for line in lines_of]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def format_result(result: dict) -> str:
    """evaluate()'s dict as a few readable lines plus the misses."""
    header = f"mode={result.get('mode')} rerank={_cell(result.get('rerank'))}"
    lines = [header, ""]
    rows = [{"scope": "all", **{k: result[k] for k in ("n", *_METRIC_KEYS)}}]
    rows += [{"scope": lang, **m} for lang, m in result.get("by_lang", {}).items()]
    rows += [{"scope": kind, **m} for kind, m in result.get("by_kind", {}).items()]
    columns = ["scope", "n", *_METRIC_KEYS]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    threshold = result.get("threshold") or {}
    if threshold.get("threshold") is not None:
        setting = "ABSTAIN_THRESHOLD" if threshold["score"] == "rerank" else "ABSTAIN_DENSE_THRESHOLD"
        lines += ["", f"Suggested {setting}: {threshold['threshold']:.3f} ({threshold['how']})."]
    elif threshold:
        lines += ["", f"No threshold suggested: {threshold['how']}."]
    misses = result.get("misses") or []
    if misses:
        lines += ["", f"Misses ({len(misses)}):"]
        for miss in misses:
            lines.append(f"  {miss['id']} [{miss['lang']}] {miss['question']} — {miss['why']}")
    return "\n".join(lines)


def format_fitted(model, path, *, bot_reads=None) -> str:
    """What `--fit-abstention` fitted and where it was saved (`path`), in a few lines;
    `bot_reads` is the file the bot loads (ABSTENTION_MODEL), to say whether it will use this one."""
    if model is None:
        return "No abstention model fitted: the file needs answerable and unanswerable items."
    return "\n".join([
        f"Abstention model ({model.score} scores, {model.model_id or 'any embedder'}): "
        f"{model.describe()}.",
        f"On {model.fitted_on or 'these items'}: declines {model.declined_unanswerable} "
        f"unanswerable, wrongly declines {model.false_abstain:.1%} of the answerable items "
        "whose answer retrieval found (the others are left out of the fit).",
        _where_saved(Path(path), Path(bot_reads) if bot_reads else Path(path)),
    ])


def _where_saved(path: Path, bot_reads: Path) -> str:
    if path.resolve() == bot_reads.resolve():
        return f"Saved to {path}, the file the bot reads (ABSTENTION_MODEL): it uses it from its next start."
    return (f"Saved to {path}; the bot reads {bot_reads}: set ABSTENTION_MODEL={path} "
            "for it to use this model from its next start.")


def pick_abstain_threshold(
    kb, items: Sequence[EvalItem], *, mode: str | None = None, rerank: bool | None = None
) -> dict:
    """The threshold that declines every unanswerable item with the fewest false abstentions.

    Scores are the best rerank score (reranking on) or best dense score (off).
    Returns {"threshold", "score", "declines_unanswerable", "false_abstain", "how"};
    threshold is None when the items hold no unanswerable question or no scores.
    """
    outcomes = run_items(kb, items, mode=mode, rerank=rerank)
    return choose_threshold(outcomes, score="rerank" if _rerank_on(kb, rerank) else "dense")


def choose_threshold(outcomes: Sequence[dict], *, score: str) -> dict:
    """See pick_abstain_threshold; works on outcomes with best_score and answerable."""
    negatives = [o["best_score"] for o in outcomes if not o["answerable"] and o["best_score"] is not None]
    positives = sorted(o["best_score"] for o in outcomes if o["answerable"] and o["best_score"] is not None)
    if not negatives or not positives:
        return {"threshold": None, "score": score, "declines_unanswerable": None,
                "false_abstain": None,
                "how": "needs both answerable and unanswerable items with scores"}
    highest_negative = max(negatives)
    above = [p for p in positives if p > highest_negative]
    # Midway to the next answerable score leaves a margin on both sides.
    threshold = (highest_negative + above[0]) / 2 if above else highest_negative + 1e-6
    false = sum(1 for p in positives if p < threshold)
    return {
        "threshold": threshold,
        "score": score,
        "declines_unanswerable": f"{len(negatives)}/{len(negatives)}",
        "false_abstain": round(false / len(positives), 4),
        "how": (
            f"highest {score} score of an unanswerable item is {highest_negative:.4f}; "
            f"the lowest answerable score above it is "
            f"{(f'{above[0]:.4f}') if above else 'none'}; threshold is set between them, "
            f"declining all {len(negatives)} unanswerable items and wrongly "
            f"{false} of {len(positives)} answerable ones"
        ),
    }
