"""``ossrun worker``: serve some of a model's layers to an ossrun on another machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ossrun.cli import options as opt
from ossrun.defaults import DEFAULT_WORKER_HOST, DEFAULT_WORKER_PORT

HELP = """Lend this machine's memory and cores to a model run on another machine.

Starts llama.cpp's RPC server. A client started with --rpc HOST:PORT[=MEMORY]
(ossrun chat, ossrun run) sends it some of the model's layers when it loads
and asks it to compute them for every token. One client at a time; Ctrl-C
stops the worker.

The weights it receives are kept in a cache folder (tensors over 10 MiB, by
hash), so a later load of the same model skips sending them: --cache-dir
moves it, --no-cache turns it off, --clear-cache empties it.

llama.cpp's RPC protocol has no authentication and no encryption: the worker
listens on 127.0.0.1 (this machine only) unless --host says otherwise. Reach
it from another machine through an SSH tunnel, or over a private network.

Examples:

\b
  ossrun worker
  ssh -N -L 50052:127.0.0.1:50052 worker-host      # on the client, then:
  ossrun chat gpt-oss-120b --rpc 127.0.0.1:50052=20GiB
  ossrun worker --host 192.168.50.2 --port 50053 --threads 8
  ossrun worker --clear-cache
"""


def register(app: typer.Typer) -> None:
    @app.command("worker", help=HELP)
    def worker_command(
        host: Annotated[
            str, typer.Option("--host", metavar="ADDRESS", help="IPv4 address to listen on (127.0.0.1: this machine only).")
        ] = DEFAULT_WORKER_HOST,
        port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port to listen on.")] = DEFAULT_WORKER_PORT,
        threads: opt.Threads = None,
        cache_dir: Annotated[
            Path | None,
            typer.Option(
                "--cache-dir",
                metavar="DIR",
                show_default=False,
                help="Where to keep the weights clients send [default: $OSSRUN_HOME/cache/rpc].",
            ),
        ] = None,
        no_cache: Annotated[bool, typer.Option("--no-cache", help="Keep no weights: every load sends them all.")] = False,
        clear_cache: Annotated[bool, typer.Option("--clear-cache", help="Empty the weight cache and exit.")] = False,
        verbose: opt.Verbose = False,
    ) -> None:
        from ossrun import worker
        from ossrun.units import format_size

        folder = None if no_cache else (cache_dir or worker.default_cache_dir())
        if clear_cache:
            if folder is None:
                raise typer.BadParameter("--clear-cache and --no-cache given: give one", param_hint="--clear-cache")
            removed = worker.clear_cache(folder)
            typer.echo(f"removed {removed.tensors} cached tensors ({format_size(removed.bytes)}) from {folder}")
            return
        worker.serve(host, port, threads=threads, cache_dir=folder, verbose=verbose)
