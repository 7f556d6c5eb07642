"""The demo model's training pipeline (development only; needs torch, see requirements.txt).

tasks (what the model can do) -> dataset (rendered exactly as ossrun renders prompts) ->
model (gpt-oss in torch, as llama.cpp computes it) -> train (fixed seed, wall-clock budget) ->
export (the compact checkpoint in ossrun/data/demo). evaluate and parity check the result.
"""
