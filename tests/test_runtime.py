"""Device / dtype / threads choice and the model-source gate that keeps the hub from being tried offline."""

import time

import pytest
import torch

from knowledge.errors import ModelLoadError
from knowledge.runtime import (
    choose_device,
    choose_dtype,
    configure_torch_threads,
    cpu_has_fast_bf16,
    resolve_model_source,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_device_auto_and_override():
    assert choose_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert choose_device("auto").type == expected


def test_unknown_or_absent_device_is_a_one_line_error():
    with pytest.raises(ModelLoadError, match="Unknown device"):
        choose_device("tpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            choose_device("cuda:0")


def test_dtype_auto_follows_the_hardware_and_overrides_win():
    cpu = torch.device("cpu")
    assert choose_dtype("auto", device=cpu) == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    assert choose_dtype("float32", device=cpu) == torch.float32
    assert choose_dtype("bfloat16", device=cpu) == torch.bfloat16
    assert choose_dtype("float16", device=cpu) == torch.float16
    assert choose_dtype("auto", device=torch.device("mps")) == torch.float16
    with pytest.raises(ModelLoadError, match="Unknown dtype"):
        choose_dtype("int3", device=cpu)


def test_torch_threads_zero_keeps_the_default_and_a_number_is_applied():
    before = torch.get_num_threads()
    try:
        assert configure_torch_threads(0) == before
        assert configure_torch_threads(1) == 1
        assert configure_torch_threads(1) == 1  # idempotent: safe for every model to call
    finally:
        torch.set_num_threads(before)


def test_existing_local_folder_is_used_as_is(tmp_path):
    assert resolve_model_source(str(tmp_path)) == str(tmp_path.resolve())


def test_missing_local_folder_fails_at_once_naming_it(tmp_path):
    missing = str(tmp_path / "no-such-model")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        resolve_model_source(missing, role="Embedding model", setting="EMBEDDING_MODEL")
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert "\n" not in message and missing in message and "EMBEDDING_MODEL" in message


def test_uncached_hub_name_offline_fails_at_once_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        resolve_model_source(
            "Qwen/Qwen3-Embedding-0.6B", role="Embedding model", setting="EMBEDDING_MODEL", cache_dir=str(tmp_path)
        )
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert "\n" not in message
    assert "'Qwen/Qwen3-Embedding-0.6B'" in message and "EMBEDDING_MODEL=/path/to/model" in message


def test_cached_hub_name_resolves_to_its_snapshot_without_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--acme--tiny-model"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    assert resolve_model_source("acme/tiny-model", cache_dir=str(tmp_path)) == str(snapshot)


def test_empty_name_is_a_configuration_error():
    with pytest.raises(ModelLoadError, match="RERANKER_MODEL"):
        resolve_model_source("  ", role="Reranker model", setting="RERANKER_MODEL")
