"""The first code a python-tool process runs, before the model's: limits, then isolation, then the code.

Run as a script (``python -I sandbox_child.py CONFIG``), never imported by ossrun:
it sets its own resource limits and leaves the network in a fresh process that
has no threads yet, which ``unshare`` needs. The code comes on stdin; like a
notebook cell, the value of a final expression is printed.
"""

import ast
import ctypes
import ctypes.util
import json
import linecache
import os
import resource
import sys
import traceback

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CELL = "<python>"  # the file name tracebacks give the code
NETWORK_UNAVAILABLE_EXIT = 111  # "could not leave the network": the parent refuses to run code then


def set_limits(config):
    for name, value in (("RLIMIT_AS", config["memory_bytes"]), ("RLIMIT_FSIZE", config["file_bytes"]), ("RLIMIT_CORE", 0)):
        if value is not None and hasattr(resource, name):
            resource.setrlimit(getattr(resource, name), (value, value))
    cpu = config["cpu_seconds"]
    if cpu is not None:
        # The soft limit sends SIGXCPU; the hard one, a second later, SIGKILL.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def unshare(flags):
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def leave_network():
    """Move into an empty network namespace; return how, or raise OSError when the system refuses.

    A user namespace comes first even for root: without it root keeps its capabilities
    and could rejoin the host's network (setns on /proc/1/ns/net) or lift the limits.
    """
    uid, gid = os.getuid(), os.getgid()
    try:
        unshare(CLONE_NEWUSER | CLONE_NEWNET)
    except OSError:
        unshare(CLONE_NEWNET)  # user namespaces disabled: root (CAP_SYS_ADMIN) can still do this
        return "network namespace"
    # Keep the same ids inside, so files in the working directory stay ours.
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"), ("/proc/self/gid_map", f"{gid} {gid} 1")):
        try:
            with open(path, "w") as f:
                f.write(text)
        except OSError:
            pass
    return "user and network namespace"


def run_cell(source):
    """Run ``source`` as ``__main__``; print the value of a final expression, as a notebook does."""
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    linecache.cache[CELL] = (len(source), None, source.splitlines(True), CELL)  # tracebacks show the lines
    tree = ast.parse(source, CELL)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, CELL, "exec"), namespace)
    if last is not None:
        value = eval(compile(last, CELL, "eval"), namespace)
        if value is not None:
            print(repr(value))


def main():
    config = json.loads(sys.argv[1])
    if config["isolate_network"]:
        try:
            how = leave_network()
        except OSError as exc:
            sys.stderr.write(f"cannot leave the network: {exc}\n")
            sys.exit(NETWORK_UNAVAILABLE_EXIT)
    else:
        how = "none"
    if config.get("probe"):
        sys.stdout.write(how)
        return
    set_limits(config)
    source = sys.stdin.read()
    sys.stdin = open(os.devnull)
    sys.argv = [""]
    sys.path.insert(0, os.getcwd())  # modules written by earlier runs can be imported
    try:
        run_cell(source)
    except SystemExit:
        raise
    except BaseException as exc:
        # Start the traceback at the model's code: this script's frames (and ast's, for a
        # syntax error) are not the model's business.
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != CELL:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb)
        sys.exit(1)


if __name__ == "__main__":
    main()
