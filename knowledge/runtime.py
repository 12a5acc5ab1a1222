"""Where and how models run: device, dtype, threads, and where their files are.

Threads are sized together: torch's intra-op threads times the model calls allowed
to run at once (`model_call`, shared by the embedder and the reranker) never exceeds
the cores, however many questions are in flight.

`resolve_model_source` is the one gate between a configured model name and the
loaders: it never lets transformers try the Hugging Face hub when it cannot be
reached (that retries for over a minute before failing).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import threading
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from knowledge.errors import ModelLoadError
from knowledge.in_flight import questions_in_flight

_TRUTHY = {"1", "true", "yes", "on"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU features that make bfloat16 matmuls fast (measured ~5x over float32 for these models with AMX).
_FAST_BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}
# glibc's malloc gives each new thread its own arena (up to 8 per core), and each keeps the freed
# activation buffers of its forward passes: with several questions in flight that added ~1 GB of RSS.
DEFAULT_MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h


def choose_device(preference: str = "auto") -> torch.device:
    """The device to run on: `auto` picks cuda, then mps, then cpu; anything else is used as given.

    Raises ModelLoadError when the requested device does not exist here.
    """
    preference = (preference or "auto").strip().lower()
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as error:
        raise ModelLoadError(f"Unknown device {preference!r}; use auto, cpu, cuda, cuda:N or mps.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"Device {preference!r} was requested but no CUDA GPU is available; set DEVICE=cpu.")
    if device.type == "mps" and not _mps_available():
        raise ModelLoadError(f"Device {preference!r} was requested but MPS is not available; set DEVICE=cpu.")
    return device


def choose_dtype(preference: str = "auto", *, device: torch.device) -> torch.dtype:
    """The weight dtype: `auto` is bfloat16 where the hardware runs it fast, float16 on mps, else float32.

    Raises ModelLoadError for an unknown dtype name.
    """
    preference = (preference or "auto").strip().lower()
    if preference != "auto":
        if preference not in _DTYPES:
            raise ModelLoadError(f"Unknown dtype {preference!r}; use auto, float32, bfloat16 or float16.")
        return _DTYPES[preference]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def cpu_has_fast_bf16() -> bool:
    """True when the CPU advertises AMX or AVX-512 bfloat16 instructions (Linux /proc/cpuinfo)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(_FAST_BF16_CPU_FLAGS & set(line.split(":", 1)[-1].split()))
    return False


def configure_torch_threads(threads: int) -> int:
    """Set torch's intra-op thread count once for the process (0 keeps torch's default); return it.

    Calling again with the same number changes nothing, so every model may call it.
    """
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@dataclass(frozen=True)
class ThreadPlan:
    """How the cores are shared: up to `model_calls` forward passes at once, each on `torch_threads`.

    `shared`: the default plan, where each call's share follows the questions in flight (all
    cores for one question alone, half each for two...), never more threads than cores in all.
    """

    cores: int
    torch_threads: int
    model_calls: int
    shared: bool = False


class _CoreLedger:
    """The cores handed out to model calls: a call takes its threads' worth and waits, first come
    first served, until that many are free."""

    def __init__(self, *, units: int, per_call: int | None, set_threads: bool = True) -> None:
        self.units = max(1, units)
        self.per_call = per_call  # None: shared out by the questions in flight
        self.set_threads = set_threads
        self._free = self.units
        self._waiting: deque[object] = deque()
        self._changed = threading.Condition()

    def share(self, questions: int) -> int:
        if self.per_call:
            return min(self.per_call, self.units)
        return max(1, self.units // max(1, questions))

    def acquire(self, units: int) -> None:
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            while self._waiting[0] is not ticket or self._free < units:
                self._changed.wait()
            self._waiting.popleft()
            self._free -= units
            self._changed.notify_all()  # the next in line may fit in what is left

    def release(self, units: int) -> None:
        with self._changed:
            self._free += units
            self._changed.notify_all()

    @property
    def in_use(self) -> int:
        with self._changed:
            return self.units - self._free


# One forward pass at a time, torch's threads untouched, until configure_threads says otherwise:
# two passes on all cores each (an embedding for one question while another is reranked) fight.
_ledger = _CoreLedger(units=1, per_call=1, set_threads=False)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def plan_threads(*, torch_threads: int = 0, model_calls: int = 0, cores: int | None = None) -> ThreadPlan:
    """Size torch threads and concurrent model calls together (0 = derive from the other and the cores).

    Neither set: shared (every core for a question alone, the lowest latency; with n questions
    in flight each call runs on cores/n threads beside the others: on 2 cores two 1-thread passes
    at once did 1.06-1.5x the work of 2-thread passes in turn, docs/performance.md). One set: the
    other is cores divided by it. Both set: taken as given.
    """
    cores = cores or usable_cores()
    if torch_threads <= 0 and model_calls <= 0:
        return ThreadPlan(cores=cores, torch_threads=cores, model_calls=cores, shared=True)
    if torch_threads <= 0:
        return ThreadPlan(cores=cores, torch_threads=max(1, cores // model_calls), model_calls=model_calls)
    if model_calls <= 0:
        return ThreadPlan(cores=cores, torch_threads=torch_threads, model_calls=max(1, cores // torch_threads))
    return ThreadPlan(cores=cores, torch_threads=torch_threads, model_calls=model_calls)


def configure_threads(*, torch_threads: int = 0, model_calls: int = 0, cores: int | None = None) -> ThreadPlan:
    """Apply `plan_threads` to this process: torch's thread count and how model calls share the cores.

    Call before the first question (a call in progress keeps what it holds).
    """
    global _ledger
    plan = plan_threads(torch_threads=torch_threads, model_calls=model_calls, cores=cores)
    configure_torch_threads(plan.torch_threads)
    # Shared: all the cores, each call's share set by the questions in flight; else fixed slots.
    units, per_call = (plan.cores, None) if plan.shared else (plan.torch_threads * plan.model_calls, plan.torch_threads)
    if not _ledger.set_threads or (_ledger.units, _ledger.per_call) != (units, per_call):
        _ledger = _CoreLedger(units=units, per_call=per_call)
    return plan


@contextmanager
def model_call() -> Iterator[None]:
    """Hold this call's share of the cores for the duration of a forward pass, torch set to use
    that many threads in the calling thread."""
    ledger = _ledger
    threads = ledger.share(questions_in_flight())
    ledger.acquire(threads)
    try:
        # Per calling thread: torch (OpenMP, MKL) keeps a thread count for each caller.
        if ledger.set_threads and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        yield
    finally:
        ledger.release(threads)


def quantize_linear_int8(module: torch.nn.Module) -> int:
    """Swap `module`'s float32 nn.Linear layers for int8 ones in place; return how many were swapped.

    Weights int8 per output channel, activations quantized per call (PyTorch's dynamic
    quantization through fbgemm/oneDNN, which need AVX2 at least): on a 2-core AMD EPYC without
    AVX-512 reranking ran 1.77x faster with P(yes) within 0.038 on random weights (bench
    `rerank.int8_*`, docs/performance.md). CPU only; raises ModelLoadError when the weights are not float32.
    """
    linears = [m for m in module.modules() if type(m) is torch.nn.Linear]
    if not linears:
        return 0
    if any(layer.weight.dtype != torch.float32 for layer in linears):
        raise ModelLoadError("int8 weights are made from float32 ones: load the model with DTYPE=float32.")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        # torch marks its eager quantization API deprecated in favour of torchao, whose CPU int8
        # path needs torch.compile; this one still runs as measured, so its notices are muted.
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning, FutureWarning))
        quantize_dynamic(module, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return len(linears)


def limit_malloc_arenas(arenas: int = DEFAULT_MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for threads started from now on; True when the cap is in force.

    An explicit MALLOC_ARENA_MAX in the environment wins (glibc read it at start-up). Harmless and
    False where the C library is not glibc (macOS, musl). Never raises.
    """
    if os.environ.get("MALLOC_ARENA_MAX", "").strip():
        return True
    libc = _glibc()
    return libc is not None and libc.mallopt(_M_ARENA_MAX, max(1, arenas)) == 1


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc `malloc_trim`); a no-op elsewhere. Never raises.

    A forward pass frees its activations into malloc's arenas, which keep them: over a refresh
    and a few questions that held ~700 MB more RSS than the models need (docs/performance.md).
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc():
    """glibc with `mallopt` and `malloc_trim` typed, loaded once; None on other C libraries.

    Looked up once: release_free_memory runs after every model call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    return libc


def hub_offline() -> bool:
    """True when the environment forbids the Hugging Face hub (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(
        os.environ.get(name, "").strip().lower() in _TRUTHY for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_model_source(
    name_or_path: str, *, role: str = "Model", setting: str = "the model setting", cache_dir: str | None = None
) -> str:
    """A local directory for a model: the path itself, the hub cache's snapshot, or a fresh download.

    `role` and `setting` only shape the message ("Embedding model", "EMBEDDING_MODEL");
    `cache_dir` overrides the hub cache folder (default: HF_HUB_CACHE).
    Raises ModelLoadError at once (one line) when the files are not here and the hub is offline,
    when a path does not exist, or when the download fails.
    """
    name = (name_or_path or "").strip()
    if not name:
        raise ModelLoadError(f"{role} is not configured; set {setting} to a hub id or a local folder.")
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if _looks_like_path(name):
        raise ModelLoadError(f"{role} folder {name!r} does not exist; set {setting} to an existing model folder.")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(name, local_files_only=True, cache_dir=cache_dir)
    except LocalEntryNotFoundError:
        pass
    except Exception as error:  # a malformed id, an unreadable cache
        raise ModelLoadError(f"{role} {name!r} cannot be used: {first_line(error)}") from error
    unreachable = (
        f"{role} {name!r} is not on this machine and the Hugging Face hub is unreachable; "
        f"download it or set {setting}=/path/to/model"
    )
    if hub_offline():
        raise ModelLoadError(unreachable)
    try:
        return snapshot_download(name, cache_dir=cache_dir, etag_timeout=10)
    except Exception as error:  # no network, unknown repo, disk full
        raise ModelLoadError(f"{unreachable} ({first_line(error)})") from error


def _looks_like_path(name: str) -> bool:
    # A hub id is "owner/name" or "name"; anything else is meant as a folder.
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def first_line(error: BaseException) -> str:
    """The error's message up to its first line break (its class name when empty)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
