"""Baselines the LLM is compared against: the standalone SER model."""
