"""The llama.cpp peer of the benchmark: the same GGUF file the embedded LLM is converted from,
run by llama.cpp. The code lives in the library (`semollama_core.model.llama_cpp_decode`, the
default decoder where llama-cpp-python is installed); these names stay for eval's callers.
"""
from semollama_core import GreedyRun, LlamaCppModel, LlamaCppSpeechLLM, LlamaCppUnavailable, embedded_gguf_path, llama_cpp_module

__all__ = ["GreedyRun", "LlamaCppModel", "LlamaCppSpeechLLM", "LlamaCppUnavailable", "embedded_gguf_path",
           "llama_cpp_module"]
