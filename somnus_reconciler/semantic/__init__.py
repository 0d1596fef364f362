"""semantic: meaning of text, by sentence embeddings.

`triage` classifies failure text from guests into SPEC categories; `history`
searches past journal events by meaning in a chromadb index. The only users of
torch, sentence-transformers and chromadb, all loaded on first use. May import:
values, journal, settings.
"""
