"""Convert gpt-oss safetensors checkpoints (HF or original layout) into one GGUF file.

The pipeline, one module per step: ``layout`` (what the folder is, its hyper-parameters),
``safetensors`` (streaming tensor reads), ``mapping`` (checkpoint names to GGUF tensors),
``mxfp4`` (lossless repack of the experts), ``encode`` (chunks of work per tensor), ``tokenizer``
(tokenizer files to GGUF vocabulary), ``writer`` (atomic streaming GGUF write, with ``fileio``)
and ``pipeline`` (:func:`convert`, which ties them together).
"""

from .encode import OUTTYPES
from .pipeline import DEFAULT_OUTTYPE, Checkpoint, convert, open_checkpoint

__all__ = ["DEFAULT_OUTTYPE", "OUTTYPES", "Checkpoint", "convert", "open_checkpoint"]
