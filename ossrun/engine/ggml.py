"""ggml's backend registry through ctypes: the part of llama.cpp that llama-cpp-python does not bind.

The ``ggml_backend_*`` functions live in ``libggml``, which llama-cpp-python loads
but does not wrap; :func:`bind` gives one its signature (``rpc.py`` binds the RPC
registry's with it). ossrun needs a few of them to choose where the weights live
(:func:`place_weights`).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache

from llama_cpp._ggml import libggml

GGML_BACKEND_DEVICE_TYPE_CPU = 0
# The tensors of the MoE experts: MXFP4, repacked by llama.cpp's CPU backend for speed.
EXPERT_TENSORS = r"_exps\.weight$"

_p = ctypes.c_void_p


def bind(name: str, restype, *argtypes):
    """A function of ``libggml`` with its ctypes signature."""
    function = getattr(libggml, name)
    function.restype, function.argtypes = restype, list(argtypes)
    return function


dev_by_type = bind("ggml_backend_dev_by_type", _p, ctypes.c_int)
_dev_backend_reg = bind("ggml_backend_dev_backend_reg", _p, _p)
reg_get_proc_address = bind("ggml_backend_reg_get_proc_address", _p, _p, ctypes.c_char_p)
_buft_name = bind("ggml_backend_buft_name", ctypes.c_char_p, _p)
_GetExtraBufts = ctypes.CFUNCTYPE(ctypes.POINTER(_p), _p)


class TensorBuftOverride(ctypes.Structure):
    """``struct llama_model_tensor_buft_override``: tensors matching ``pattern`` go to ``buft``."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", _p)]


@lru_cache(maxsize=1)
def cpu_extra_buffer_types() -> dict[str, int]:
    """The CPU backend's extra weight buffer types by name ("CPU_REPACK", "AMX", ...)."""
    cpu = dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    if not cpu:
        return {}
    address = reg_get_proc_address(_dev_backend_reg(cpu), b"ggml_backend_dev_get_extra_bufts")
    if not address:
        return {}
    bufts = _GetExtraBufts(address)(cpu)
    found, i = {}, 0
    while bufts and bufts[i]:
        found[_buft_name(bufts[i]).decode()] = bufts[i]
        i += 1
    return found


@dataclass(frozen=True)
class WeightPlacement:
    """How a model's weights are placed on the CPU: llama.cpp's ``use_extra_bufts`` and overrides."""

    use_extra_bufts: bool
    overrides: ctypes.Array | None = None  # NULL-terminated TensorBuftOverride array, kept alive here


@lru_cache(maxsize=1)
def cpu_weight_placement() -> WeightPlacement:
    """llama.cpp's default placement, minus its AMX buffer type.

    The AMX kernels of this llama.cpp crash (SIGSEGV in ``ggml_backend_amx_mul_mat`` on
    the first multi-token batch; llama.cpp issue 20824) on hosts whose CPUs report AMX,
    which includes common cloud machines. Where AMX is offered, the extra buffer types
    are turned off and the experts are put back on the CPU repack buffer by hand: the
    dense Q8_0 matrices then use the plain CPU kernels, exactly as on a CPU without AMX.
    """
    extras = cpu_extra_buffer_types()
    if "AMX" not in extras:
        return WeightPlacement(use_extra_bufts=True)
    repack = extras.get("CPU_REPACK")
    if repack is None:
        return WeightPlacement(use_extra_bufts=False)
    overrides = (TensorBuftOverride * 2)()
    overrides[0].pattern, overrides[0].buft = EXPERT_TENSORS.encode(), repack
    return WeightPlacement(use_extra_bufts=False, overrides=overrides)


def place_weights(params) -> None:
    """Set a ``llama_model_params`` to :func:`cpu_weight_placement` (the overrides stay referenced here)."""
    placement = cpu_weight_placement()
    params.use_extra_bufts = placement.use_extra_bufts
    if placement.overrides is not None:
        params.tensor_buft_overrides = ctypes.addressof(placement.overrides)
