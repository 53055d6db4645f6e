"""The speech-to-LLM path: audio, backbone, prosody, adapter, splice, frozen LLM, decoding, the system."""
