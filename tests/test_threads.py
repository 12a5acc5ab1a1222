"""Threads sized together: torch threads x concurrent model calls never exceed the cores,
and questions in flight take turns at the models instead of oversubscribing them."""

import threading
import time

import torch

from knowledge import runtime
from knowledge.runtime import configure_threads, plan_threads


def test_plan_divides_the_cores_between_threads_and_calls():
    assert plan_threads(cores=2) == runtime.ThreadPlan(cores=2, torch_threads=2, model_calls=1)
    assert plan_threads(cores=8, model_calls=2) == runtime.ThreadPlan(cores=8, torch_threads=4, model_calls=2)
    assert plan_threads(cores=8, torch_threads=2) == runtime.ThreadPlan(cores=8, torch_threads=2, model_calls=4)
    assert plan_threads(cores=2, model_calls=4).torch_threads == 1  # never below one thread
    for cores in (1, 2, 3, 8, 64):
        for calls in (0, 1, 2, 3):
            plan = plan_threads(cores=cores, model_calls=calls)
            assert plan.torch_threads * plan.model_calls <= max(cores, plan.model_calls)


def test_embedder_and_reranker_never_run_a_forward_pass_at_the_same_time(tiny_embedder, tiny_reranker):
    """Two questions in flight: one embedding while the other reranks. With the default plan
    (one model call at a time) no two forward passes overlap; each would use every core."""
    before = torch.get_num_threads()
    plan = configure_threads()
    try:
        assert plan.model_calls == 1 and plan.torch_threads == runtime.usable_cores()
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
        errors: list[BaseException] = []

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

        def run(target) -> None:
            try:
                target()
            except BaseException as error:  # surfaced below
                errors.append(error)

        deadline[0] = time.monotonic() + 2.0
        threads = [threading.Thread(target=run, args=(t,)) for t in (embed, rerank)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
        finally:
            for handle in handles:
                handle.remove()
        assert not errors
        assert entered["embedder"] and entered["reranker"]
        assert peak[0] == 1
    finally:
        torch.set_num_threads(before)
