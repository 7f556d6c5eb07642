"""The first code a python-tool process runs, before the model's: isolation, then limits, then the code.

Run as a script (``python -I sandbox_child.py CONFIG``), never imported by ossrun:
``unshare`` needs a process with no threads yet. The jail (``sandbox_jail.py``) returns
in the process that runs the code, which then sets its limits. The code comes on stdin;
like a notebook cell, the value of a final expression is printed.
"""

import ast
import json
import linecache
import os
import resource
import sys
import traceback

CELL = "<python>"  # the file name tracebacks give the code
ISOLATION_UNAVAILABLE_EXIT = 111  # "cannot isolate the code: ...": the parent refuses to run code then


def set_limits(config):
    limits = (("RLIMIT_AS", config["memory_bytes"]), ("RLIMIT_FSIZE", config["file_bytes"]),
              ("RLIMIT_NPROC", config["processes"]), ("RLIMIT_CORE", 0))
    for name, value in limits:
        if value is not None and hasattr(resource, name):
            resource.setrlimit(getattr(resource, name), (value, value))
    cpu = config["cpu_seconds"]
    if cpu is not None:
        # The soft limit sends SIGXCPU; the hard one, a second later, SIGKILL.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def isolate(config):
    """Enter the jail; return how the code is isolated, in the code's process only."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the jail's modules, beside this one
    try:
        import sandbox_jail
    finally:
        del sys.path[0]  # not the code's: its imports do not see ossrun's tools
    try:
        return sandbox_jail.enter(config["workdir"], network=config["network"], tmp_bytes=config["file_bytes"])
    except sandbox_jail.Refused as exc:
        sys.stderr.write(f"cannot isolate the code: {exc}\n")
        sys.exit(ISOLATION_UNAVAILABLE_EXIT)


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
    source = sys.stdin.read()  # before the jail: each process it forks has the code in memory
    how = isolate(config) if config["isolate"] else "none"
    if config["probe"]:
        sys.stdout.write(how)
        return
    set_limits(config)
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
