"""llama.cpp's RPC backend (ggml-rpc): workers on other machines that hold some of the layers.

ossrun uses llama.cpp's own engine, not a protocol of its own. The ``ggml_backend_rpc_*``
functions live in ``libggml-rpc`` and are reached through the RPC registry's proc addresses
(as llama.cpp's ``--rpc`` does): llama-cpp-python binds none of them.

llama.cpp calls GGML_ABORT (the process dies) when it cannot connect to a worker or the
handshake fails, so :func:`probe` checks each endpoint first: a TCP connection with a
timeout, then the RPC hello with its protocol version. :func:`place` then plans which
layers each machine holds (:mod:`ossrun.engine.placement`) and returns :class:`Workers`,
which hands the devices and the split to ``llama_model_params`` and watches every call that
talks to them (:mod:`ossrun.engine.watchdog`).

Wire format (ggml-rpc.cpp): a request is ``| command (1 byte) | size (8 bytes LE) | data |``,
a reply ``| size (8 bytes LE) | data |``.
"""

from __future__ import annotations

import ctypes
import re
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import gguf
import llama_cpp

from ossrun.defaults import DEFAULT_WORKER_PORT
from ossrun.engine import memory
from ossrun.engine.ggml import (
    GGML_BACKEND_DEVICE_TYPE_CPU,
    TensorBuftOverride,
    bind,
    cpu_extra_buffer_types,
    cpu_weight_placement,
    dev_by_type,
    reg_get_proc_address,
)
from ossrun.engine.gguf_header import GgufHeader, read_header
from ossrun.engine.placement import Placement, WorkerAsk, layer_sizes, plan
from ossrun.engine.watchdog import Watchdog
from ossrun.errors import OssrunError, WorkerError
from ossrun.machine import available_memory
from ossrun.units import parse_size

# The protocol of the llama.cpp this llama-cpp-python vendors (RPC_PROTO_*_VERSION in ggml-rpc.h);
# a worker's major must match and its minor be no newer, as llama.cpp's own handshake demands.
PROTOCOL = (7, 0, 0)
HELLO_TIMEOUT = 3.0  # seconds: an idle worker answers in milliseconds
RPC_CMD_GET_DEVICE_MEMORY = 11
RPC_CMD_HELLO = 14
RPC_CMD_DEVICE_COUNT = 15
CONN_CAPS_SIZE = 24  # transport capabilities in the hello (RDMA); all zero: plain TCP
# Weight tensors above this size are sent by hash first (ggml-rpc.cpp HASH_THRESHOLD): a worker
# with a cache folder skips their transfer on later loads.
CACHED_TENSOR_BYTES = 10 * 2**20
# Tensors of the output layer: llama.cpp would put them on the last worker (the logits would
# then cross the network); ossrun keeps them here.
OUTPUT_TENSORS = r"^output(_norm)?\.weight$"


def rebuild_command() -> str:
    """How to reinstall llama-cpp-python with the RPC backend (a cached wheel may lack it)."""
    return (
        f'CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_RPC=ON -DGGML_RPC_RDMA=OFF" '
        f"pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python=={llama_cpp.__version__}"
    )


def supports_rpc() -> bool:
    return bool(llama_cpp.llama_supports_rpc())


def require_rpc() -> None:
    if not supports_rpc():
        raise OssrunError(f"this llama-cpp-python was built without llama.cpp's RPC backend: rebuild it with {rebuild_command()}")


# -- endpoints -------------------------------------------------------------------------------------

_ENDPOINT = re.compile(r"^(?P<host>[^\s:=\[\]]+):(?P<port>\d+)(?:=(?P<memory>.+))?$")


@dataclass(frozen=True)
class WorkerSpec:
    """One ``--rpc`` entry: ``HOST:PORT`` and the memory the worker may use (None: an even split)."""

    host: str
    port: int
    memory: int | None = None

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


def parse_workers(specs: str | Sequence[str]) -> tuple[WorkerSpec, ...]:
    """``"HOST:PORT[=MEMORY],..."`` (one string, or several) as WorkerSpecs; WorkerError if malformed."""
    entries = [specs] if isinstance(specs, str) else list(specs)
    parts = [p.strip() for entry in entries for p in str(entry).split(",") if p.strip()]
    if not parts:
        raise WorkerError("--rpc names no worker: give HOST:PORT[=MEMORY], several separated by commas")
    workers = []
    for part in parts:
        match = _ENDPOINT.match(part)
        if not match:
            example = f"192.168.1.20:{DEFAULT_WORKER_PORT}=20GiB"
            raise WorkerError(
                f"--rpc {part!r} is not HOST:PORT or HOST:PORT=MEMORY (e.g. {example}; "
                f"llama.cpp's RPC takes IPv4 addresses and host names)"
            )
        port = int(match["port"])
        if not 0 < port < 65536:
            raise WorkerError(f"--rpc {part!r}: port {port} is out of range (1-65535)")
        memory = None
        if match["memory"] is not None:
            try:
                memory = parse_size(match["memory"])
            except ValueError:
                raise WorkerError(f"--rpc {part!r}: {match['memory']!r} is not a memory size like 20GiB or 16GB") from None
        workers.append(WorkerSpec(match["host"], port, memory))
    names = [w.name for w in workers]
    for name in names:
        if names.count(name) > 1:
            raise WorkerError(f"--rpc names {name} twice: a worker serves one client at a time, give each once")
    return tuple(workers)


# -- probing -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker said in its hello, and the memory of its first device."""

    spec: WorkerSpec
    address: str  # the IPv4 address the host name resolves to
    version: tuple[int, int, int]
    devices: int
    free_memory: int
    total_memory: int


class _Closed(Exception):
    pass


class _Garbled(Exception):
    pass


def _receive(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise _Closed
        data += chunk
    return bytes(data)


def _command(sock: socket.socket, command: int, payload: bytes, reply_size: int) -> bytes:
    sock.sendall(bytes([command]) + struct.pack("<Q", len(payload)) + payload)
    (size,) = struct.unpack("<Q", _receive(sock, 8))
    if size != reply_size:
        raise _Garbled
    return _receive(sock, reply_size)


def probe(spec: WorkerSpec, timeout: float = HELLO_TIMEOUT) -> WorkerInfo:
    """Connect to a worker and say hello as llama.cpp would; WorkerError with one line if it cannot serve."""
    name = spec.name
    try:
        address = socket.gethostbyname(spec.host)
    except OSError:
        raise WorkerError(
            f"worker {name}: cannot resolve the host name {spec.host!r}; check the address given to --rpc"
        ) from None
    try:
        sock = socket.create_connection((address, spec.port), timeout=timeout)
    except ConnectionRefusedError:
        raise WorkerError(
            f"worker {name} refuses connections: start `ossrun worker --port {spec.port}` on that machine "
            f"(with --host set to an address this machine reaches), or check the port"
        ) from None
    except TimeoutError:
        raise WorkerError(
            f"worker {name} does not answer (no connection within {timeout:g} s): "
            f"check the address and that the machine is up and reachable"
        ) from None
    except OSError as exc:
        raise WorkerError(f"worker {name} cannot be reached: {exc.strerror or exc}") from None
    with sock:
        sock.settimeout(timeout)
        try:
            hello = _command(sock, RPC_CMD_HELLO, bytes(CONN_CAPS_SIZE), 4 + CONN_CAPS_SIZE)
            version = (hello[0], hello[1], hello[2])
            if version[0] != PROTOCOL[0] or version[1] > PROTOCOL[1]:
                mine = ".".join(map(str, PROTOCOL))
                raise WorkerError(
                    f"worker {name} speaks llama.cpp's RPC protocol {'.'.join(map(str, version))} and this ossrun "
                    f"{mine}: install the same llama-cpp-python ({llama_cpp.__version__}) on both machines"
                )
            (devices,) = struct.unpack("<I", _command(sock, RPC_CMD_DEVICE_COUNT, b"", 4))
            free, total = struct.unpack("<QQ", _command(sock, RPC_CMD_GET_DEVICE_MEMORY, struct.pack("<I", 0), 16))
        except TimeoutError:
            raise WorkerError(
                f"worker {name} accepted the connection but did not answer llama.cpp's RPC hello within {timeout:g} s: "
                f"a worker serves one client at a time, so another ossrun is probably using it (or that port is not a worker)"
            ) from None
        except _Closed:
            raise WorkerError(
                f"worker {name} closed the connection during llama.cpp's RPC hello: it is not an ossrun worker, "
                f"or one of another version (this ossrun speaks RPC protocol {PROTOCOL[0]}.x)"
            ) from None
        except _Garbled:
            raise WorkerError(
                f"{name} answered llama.cpp's RPC hello with something else: it is not an ossrun worker; check the port"
            ) from None
        except OSError as exc:
            raise WorkerError(
                f"worker {name} dropped the connection during llama.cpp's RPC hello: {exc.strerror or exc}"
            ) from None
    if devices < 1:
        raise WorkerError(f"worker {name} offers no device to compute on")
    return WorkerInfo(spec, address, version, devices, free, total)


# -- the RPC registry ----------------------------------------------------------------------------------

_p = ctypes.c_void_p

_reg_by_name = bind("ggml_backend_reg_by_name", _p, ctypes.c_char_p)
_reg_dev_count = bind("ggml_backend_reg_dev_count", ctypes.c_size_t, _p)
_reg_dev_get = bind("ggml_backend_reg_dev_get", _p, _p, ctypes.c_size_t)
_dev_buffer_type = bind("ggml_backend_dev_buffer_type", _p, _p)
_dev_memory = bind("ggml_backend_dev_memory", None, _p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t))
_AddServer = ctypes.CFUNCTYPE(_p, ctypes.c_char_p)
StartServer = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(_p))


def _rpc_function(name: bytes, prototype):
    require_rpc()
    registry = _reg_by_name(b"RPC")
    address = reg_get_proc_address(registry, name) if registry else None
    if not address:
        raise OssrunError(f"llama.cpp's RPC backend has no {name.decode()}: rebuild llama-cpp-python with {rebuild_command()}")
    return prototype(address)


@cache
def _device_of(endpoint: str) -> int:
    """The first device a worker offers, as a ``ggml_backend_dev_t``.

    ``ggml_backend_rpc_add_server`` makes the worker's devices without registering them
    process-wide (llama.cpp's ``--rpc`` registers them; ossrun passes them explicitly in
    ``llama_model_params.devices``). It keeps one registry per endpoint for the process.
    """
    registry = _rpc_function(b"ggml_backend_rpc_add_server", _AddServer)(endpoint.encode())
    if not registry or _reg_dev_count(registry) < 1:
        raise WorkerError(f"worker {endpoint} offers no device to compute on")
    return _reg_dev_get(registry, 0)


def cpu_device() -> int:
    return dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)


def cpu_memory() -> tuple[int, int]:
    """(free, total) bytes this machine's CPU device reports: what a worker tells its clients."""
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    _dev_memory(cpu_device(), ctypes.byref(free), ctypes.byref(total))
    return free.value, total.value


def start_server(endpoint: str, cache_dir: str | None, threads: int) -> None:
    """llama.cpp's RPC server on this machine's CPU; returns only if it cannot listen."""
    start = _rpc_function(b"ggml_backend_rpc_start_server", StartServer)
    devices = (_p * 1)(cpu_device())
    start(endpoint.encode(), cache_dir.encode() if cache_dir else None, threads, 1, devices)


# -- a model over several machines ----------------------------------------------------------------------


class Workers:
    """The workers one model is loaded over: their devices, the layer split, the watchdog.

    :meth:`apply` sets a ``llama_model_params``: llama.cpp offloads the last ``n_gpu_layers``
    "layers" (the output layer counts as one, and goes first) to ``devices`` in proportion to
    ``tensor_split``; given in layers, that proportion is exact. The output tensors are then
    put back on this CPU, and the MXFP4 repack override that the AMX workaround needs
    (:func:`ossrun.engine.ggml.cpu_weight_placement`) is narrowed to the layers kept here.
    """

    def __init__(self, placement: Placement, infos: Sequence[WorkerInfo]):
        self.placement = placement
        self.infos = tuple(infos)
        self.watchdog = Watchdog({(i.address, i.spec.port): i.spec.name for i in infos})
        self.watchdog.install_abort_handler()
        with self.watch("connecting to the workers"):
            devices = [_device_of(info.spec.name) for info in infos]
        self._devices = (_p * (len(devices) + 1))(*devices, None)
        counts = [share.count for share in placement.workers]
        counts[-1] += 1  # the output layer's slot: kept on this CPU by the override below
        self._split = (ctypes.c_float * llama_cpp.llama_max_devices())(*counts)
        overrides = [(OUTPUT_TENSORS, _dev_buffer_type(cpu_device()))]
        local = placement.local.count
        repack = cpu_extra_buffer_types().get("CPU_REPACK")
        if cpu_weight_placement().overrides is not None and repack and local:
            layers = "|".join(str(i) for i in range(local))
            overrides.append((rf"^blk\.({layers})\..*_exps\.weight$", repack))
        self._patterns = [pattern.encode() for pattern, _ in overrides]  # kept referenced for llama.cpp
        self._overrides = (TensorBuftOverride * (len(overrides) + 1))()
        # the array is one entry longer than overrides: the zeroed entry that ends it
        for entry, pattern, (_, buft) in zip(self._overrides, self._patterns, overrides, strict=False):
            entry.pattern, entry.buft = pattern, buft

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(info.spec.name for info in self.infos)

    def describe(self) -> str:
        return self.placement.describe()

    def apply(self, params) -> None:
        """Point a ``llama_model_params`` (after :func:`ossrun.engine.ggml.place_weights`) at the workers."""
        params.devices = ctypes.addressof(self._devices)
        params.n_gpu_layers = self.placement.offloaded + 1
        params.split_mode = llama_cpp.LLAMA_SPLIT_MODE_LAYER
        params.tensor_split = self._split
        params.tensor_buft_overrides = ctypes.addressof(self._overrides)

    def watch(self, what: str, tokens: int = 0, *, ticking: bool = False):
        """A context manager around a llama.cpp call that talks to the workers (see Watchdog.watch)."""
        return self.watchdog.watch(what, tokens, ticking=ticking)


def model_tensors(header: GgufHeader, files: Sequence) -> list:
    """Every tensor of a model, from all its files (a split GGUF lists its own tensors in each)."""
    tensors = list(header.tensors)
    for path in files[1:]:
        tensors += read_header(path).tensors
    return tensors


def probe_workers(specs: str | Sequence[str]) -> tuple[WorkerInfo, ...]:
    """Parse ``--rpc`` and check every worker (:func:`probe`): WorkerError naming the first that cannot serve."""
    require_rpc()
    return tuple(probe(spec) for spec in parse_workers(specs))


def place(
    header: GgufHeader,
    n_ctx: int,
    infos: Sequence[WorkerInfo],
    *,
    model: str,
    files: Sequence = (),
    local_available: int | None = None,
    parallel: int = 1,
    cache: memory.CacheSettings = memory.DEFAULT_CACHE,
) -> Workers:
    """Plan the layers over this machine and the workers at ``n_ctx`` and check every machine's
    memory (ModelError naming each share, as ``memory.check`` does for one machine): the
    Workers to load over. Each layer's KV cache and this machine's buffers come from the memory plan."""
    n_layers = int(header.arch_value(gguf.Keys.LLM.BLOCK_COUNT) or 0)
    tensors = model_tensors(header, files)
    per_layer, other = layer_sizes(tensors, n_layers)
    shape = memory.ModelShape.of(header, tensors)
    kv = memory.kv_bytes_per_layer(shape, n_ctx, parallel=parallel, cache=cache)
    whole = memory.plan_shape(shape, n_ctx, parallel=parallel, cache=cache, model=model)
    overhead = whole.compute + whole.outputs + whole.checkpoints + whole.runtime
    asks = [WorkerAsk(i.spec.name, i.spec.memory, i.free_memory) for i in infos]
    available = available_memory() if local_available is None else local_available
    placement = plan(model, per_layer, other, kv, asks, n_ctx=n_ctx, local_available=available, local_overhead=overhead)
    return Workers(placement, infos)
