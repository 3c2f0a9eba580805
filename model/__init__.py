"""The CogVLM family (CogVLM, CogVLM2, CogAgent, GLM-4V), our own implementation.

- `model.api`: what jobs use (`VisualExpertModel`, `GenerationSettings`, `Generation`).
- `model.processor`: image preprocessing and prompt templates, usable without torch or weights.
- `model.config`, `model.model` (+ `model.cogagent`, `model.glm`, `model.architectures`), `model.loading`,
  `model.generate`: config, modules, strict loading, decoding. `model.glm4_tokenizer`: GLM-4's tokenizer.
- `model.tokenization`: text <-> ids as the official code gets them (sentencepiece / tokenizers, no transformers).
- `model.tiny`: tiny random checkpoints in the released layout, for tests and dry runs.

Nothing is imported here, so CPU-only stages can import `model.processor` cheaply.
"""
