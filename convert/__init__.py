"""Convert gpt-oss safetensors checkpoints (HF or original layout) into one GGUF file."""
