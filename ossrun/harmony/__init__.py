"""The harmony wing: the only code that talks to ``openai_harmony``.

- :mod:`ossrun.harmony.encoding` — the gpt-oss encoding, loaded offline; stop and special tokens
- :mod:`ossrun.harmony.prompt` — messages and settings rendered to prompt token ids
- :mod:`ossrun.harmony.parser` — one assistant turn's tokens parsed into events, malformed output recovered
- :mod:`ossrun.harmony.tiktoken_file` — the o200k vocabulary file, derived from a model's own tokens
- :mod:`ossrun.harmony.vocab` — the o200k_harmony ``tokenizer.json`` a checkpoint carries
"""
