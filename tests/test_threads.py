"""Threads sized together: torch threads x concurrent model calls never exceed the cores,
and questions in flight take turns at the models instead of oversubscribing them."""

import threading
import time

import torch

from knowledge import runtime
from knowledge.runtime import configure_threads, plan_threads
from tests.concurrently import run_concurrently


def test_plan_divides_the_cores_between_threads_and_calls():
    assert plan_threads(cores=2) == runtime.ThreadPlan(cores=2, torch_threads=2, model_calls=2, shared=True)
    assert plan_threads(cores=8, model_calls=2) == runtime.ThreadPlan(cores=8, torch_threads=4, model_calls=2)
    assert plan_threads(cores=8, torch_threads=2) == runtime.ThreadPlan(cores=8, torch_threads=2, model_calls=4)
    assert plan_threads(cores=2, model_calls=4).torch_threads == 1  # never below one thread
    for cores in (1, 2, 3, 8, 64):
        for calls in (0, 1, 2, 3):
            plan = plan_threads(cores=cores, model_calls=calls)
            if not plan.shared:  # the shared plan divides the cores per call (tested below)
                assert plan.torch_threads * plan.model_calls <= max(cores, plan.model_calls)


def test_embedder_and_reranker_never_run_a_forward_pass_at_the_same_time(tiny_embedder, tiny_reranker):
    """An embedding and a reranking with no question counted in flight (a refresh beside a
    warm-up, say): each call takes every core, so no two forward passes overlap."""
    before = torch.get_num_threads()
    plan = configure_threads()
    try:
        assert plan.shared and plan.torch_threads == runtime.usable_cores()
        active, peak, lock = [0], [0], threading.Lock()

        entered = {"embedder": 0, "reranker": 0}

        def entering(name):
            def enter(*_):
                with lock:
                    entered[name] += 1
                    active[0] += 1
                    peak[0] = max(peak[0], active[0])
            return enter

        def leave(*_):
            with lock:
                active[0] -= 1

        # From the first layer in to the last out: sentence-transformers calls the model's forward directly.
        models = {"embedder": tiny_embedder.model[0].auto_model, "reranker": tiny_reranker.model.base_model}
        handles = [h for name, m in models.items()
                   for h in (m.embed_tokens.register_forward_pre_hook(entering(name)),
                             m.norm.register_forward_hook(leave))]
        barrier = threading.Barrier(2)
        deadline = [0.0]

        def embed() -> None:
            barrier.wait()
            i = 0
            while time.monotonic() < deadline[0]:
                tiny_embedder.embed_documents([f"passage {i} about Milvus storage " * 30] * 4)
                i += 1

        def rerank() -> None:
            barrier.wait()
            i = 0
            while time.monotonic() < deadline[0]:
                tiny_reranker.score(f"question {i}?", ["Milvus stores data in object storage. " * 30] * 4,
                                    use_cache=False)
                i += 1

        deadline[0] = time.monotonic() + 2.0
        try:
            errors = run_concurrently([embed, rerank])
        finally:
            for handle in handles:
                handle.remove()
        assert not errors
        assert entered["embedder"] and entered["reranker"]
        assert peak[0] == 1
    finally:
        torch.set_num_threads(before)


def test_two_questions_in_flight_run_side_by_side_on_half_the_cores_each(tiny_embedder, tiny_reranker):
    """The shared plan on 2 cores: a question alone runs its passes on both; with two in flight
    (one embedding while the other reranks) each pass runs on one thread beside the other's,
    and the threads in use never exceed the cores."""
    from knowledge.in_flight import question_in_flight, questions_in_flight

    before = torch.get_num_threads()
    configure_threads(cores=2)
    try:
        seen, active, peak, lock = [], [0], [0], threading.Lock()

        def enter(*_):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                seen.append((questions_in_flight(), torch.get_num_threads(), runtime._ledger.in_use))

        def leave(*_):
            with lock:
                active[0] -= 1

        models = (tiny_embedder.model[0].auto_model, tiny_reranker.model.base_model)
        handles = [h for m in models
                   for h in (m.embed_tokens.register_forward_pre_hook(enter), m.norm.register_forward_hook(leave))]
        try:
            with question_in_flight():
                tiny_reranker.score("alone?", ["Milvus stores data in object storage. " * 20], use_cache=False)
            assert seen and all(threads == 2 for _, threads, _ in seen)
            seen.clear()
            barrier = threading.Barrier(2)
            deadline = time.monotonic() + 2.0

            def embed() -> None:
                for i in range(10**6):
                    if time.monotonic() > deadline:
                        return
                    tiny_embedder.embed_query(f"question {i} about etcd and object storage " * 8)

            def rerank() -> None:
                for i in range(10**6):
                    if time.monotonic() > deadline:
                        return
                    tiny_reranker.score(f"question {i}?", ["Milvus stores data in object storage. " * 20] * 2,
                                        use_cache=False)

            def ask(work) -> None:
                with question_in_flight():
                    barrier.wait()
                    work()
                    barrier.wait()  # both stay counted until both are done

            errors = run_concurrently([lambda: ask(embed), lambda: ask(rerank)])
        finally:
            for handle in handles:
                handle.remove()
        assert not errors
        assert seen and all(questions == 2 and threads == 1 for questions, threads, _ in seen)
        assert all(in_use <= 2 for *_, in_use in seen)
        assert peak[0] == 2  # the two passes did run at the same time
    finally:
        configure_threads()
        torch.set_num_threads(before)
