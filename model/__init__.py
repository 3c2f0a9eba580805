"""The CogVLM / CogVLM2 visual-expert model, our own implementation.

- `model.api`: what jobs use (`VisualExpertModel`, `GenerationSettings`, `Generation`).
- `model.processor`: image preprocessing and prompt templates, usable without torch or weights.
- `model.tokenization`: text <-> ids as the official code gets them (sentencepiece / tokenizers, no transformers).
- `model.config`, `model.model`, `model.loading`, `model.generate`: config, modules, strict loading, decoding.
- `model.tiny`: tiny random checkpoints in the released layout, for tests and dry runs.

Nothing is imported here, so CPU-only stages can import `model.processor` cheaply.
"""
