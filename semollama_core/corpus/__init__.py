"""Corpora: manifests, converters of public corpora, uploaded archives, the synthetic corpus."""
