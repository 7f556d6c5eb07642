"""llama-cpp-python's own ``Llama`` over a GGUF, with the weights placed as ossrun places them.

Tests that check a converted file against llama.cpp itself use ``Llama`` directly, not ossrun's
engine. llama.cpp's AMX buffer type crashes on hosts that report AMX (see
``ossrun.engine.ggml.cpu_weight_placement``), so its default model parameters get ossrun's placement.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def open_llama(path: Path, **kwargs):
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    from ossrun.engine.ggml import place_weights

    default_params = bindings.llama_model_default_params

    def params():
        params = default_params()
        place_weights(params)
        return params

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bindings, "llama_model_default_params", params)
        return llama_cpp.Llama(str(path), **kwargs)
