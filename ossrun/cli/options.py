"""Options shared by ``ossrun chat`` and ``ossrun run``, as ``Annotated`` aliases.

Kept free of heavy imports: ``ossrun --help`` loads this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, cast

import typer

from ossrun.defaults import DEFAULT_KV_TYPE, DEFAULT_MCP_TIMEOUT, DEFAULT_REASONING_EFFORT, KV_TYPES
from ossrun.harmony.messages import ReasoningEffort as Effort
from ossrun.harmony.messages import check_reasoning_effort
from ossrun.options import ReplyOptions

# models.toml names the default; this is for help texts, which must not read files
DEFAULT_MODEL_HELP = "the registry's default, gpt-oss-20b"
DEFAULT_EFFORT = DEFAULT_REASONING_EFFORT


def _check_effort(value: str | None) -> Effort | None:
    # Raises an OssrunError, not a usage error: one line "error: ..." from main(), exit code 1.
    return None if value is None else check_reasoning_effort(value)


def effort(value: str | None) -> Effort | None:
    """``-r`` as its type: the callback has checked it (Typer declares options with plain types)."""
    return cast("Effort | None", value)


def parse_ctx(value: Any) -> Any:
    """``--ctx``: ``auto`` or a number of tokens (at least 1; the model's limit is checked once it is read)."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        tokens = int(text)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a number of tokens: give one (e.g. 32768) or auto") from None
    if tokens < 1:
        raise typer.BadParameter(f"{tokens} is less than 1: give a number of tokens (e.g. 32768) or auto")
    return tokens


def parse_kv_type(value: str) -> str:
    """``--kv-type``: one type for keys and values, or KEY,VALUE."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) > 2 or any(p not in KV_TYPES for p in parts):
        raise typer.BadParameter(f"{value!r} is not a KV cache type: use {'|'.join(KV_TYPES)}, or KEY,VALUE (e.g. q8_0,f16)")
    return ",".join(parts)


ModelArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="MODEL", help=f"Registry name, alias or GGUF path [default: {DEFAULT_MODEL_HELP}].", show_default=False
    ),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "-m",
        "--model",
        metavar="MODEL",
        help=f"Registry name, alias or GGUF path [default: {DEFAULT_MODEL_HELP}].",
        show_default=False,
    ),
]
ReasoningEffort = Annotated[
    str | None,
    typer.Option(
        "-r",
        "--reasoning-effort",
        metavar="low|medium|high",
        callback=_check_effort,
        show_default="the model's, medium",
        help="How hard the model thinks before answering.",
    ),
]
System = Annotated[
    str | None,
    typer.Option(
        "--system", metavar="TEXT", help="Instructions for the model (harmony's developer message).", show_default=False
    ),
]
# The model's defaults (models.toml's reasoning_effort and sampling; medium, 1.0, 1.0 for gpt-oss) unless given
ModelsDefault = "the model's, 1.0"
Temperature = Annotated[
    float | None,
    typer.Option("--temperature", min=0.0, show_default=ModelsDefault, help="Sampling temperature (OpenAI recommends 1.0)."),
]
TopP = Annotated[
    float | None, typer.Option("--top-p", min=0.0, max=1.0, show_default=ModelsDefault, help="Nucleus sampling mass (1.0: off).")
]
Seed = Annotated[int | None, typer.Option("--seed", help="Random seed, for repeatable output.", show_default=False)]
MaxTokens = Annotated[
    int | None,
    typer.Option(
        "--max-tokens",
        min=1,
        help="Stop after this many tokens [default: until the answer ends or the context is full].",
        show_default=False,
    ),
]
Ctx = Annotated[
    str,
    typer.Option(
        "--ctx",
        metavar="auto|TOKENS",
        callback=parse_ctx,
        help="Context size in tokens, up to the model's 131072; auto: the largest that fits in memory (see `ossrun plan`).",
    ),
]
KvType = Annotated[
    str,
    typer.Option(
        "--kv-type",
        metavar="f16|q8_0",
        callback=parse_kv_type,
        help="KV cache type: q8_0 takes half the memory of f16 (KEY,VALUE for separate types).",
    ),
]
SwaFull = Annotated[
    bool,
    typer.Option(
        "--swa-full",
        help="Keep every position in the sliding-window layers too (twice the KV cache), "
        "instead of their window and checkpoints; for comparison.",
    ),
]
Threads = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="CPU threads [default: the physical cores].", show_default=False),
]
Verbose = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's own log lines.")]
Demo = Annotated[
    bool,
    typer.Option(
        "--demo",
        help="Use the tiny demo model that ships with ossrun: offline, built in seconds, "
        "it adds two-digit numbers, names capitals and calls a get_weather function.",
    ),
]
Pull = Annotated[bool, typer.Option("--pull", help="Download the model first if it is not on disk (as ossrun pull).")]
Rpc = Annotated[
    list[str] | None,
    typer.Option(
        "--rpc",
        metavar="HOST:PORT[=MEMORY][,...]",
        show_default=False,
        help="Run the model's last layers on these workers (`ossrun worker` on each machine), each holding "
        "as many as fit in MEMORY (e.g. 192.168.1.20:50052=20GiB); without MEMORY the layers are "
        "split evenly over this machine and the workers.",
    ),
]
Functions = Annotated[
    list[Path] | None,
    typer.Option(
        "--functions",
        metavar="FILE.py",
        show_default=False,
        help="Let the model call the public functions defined in this Python file (repeatable).",
    ),
]
Tool = Annotated[
    list[str] | None,
    typer.Option(
        "--tool",
        metavar="python",
        show_default=False,
        help="Give the model the python tool: its code runs in a fresh process with no network, "
        "a 120 s timeout and 1 GiB of memory for all its processes, after you confirm each run.",
    ),
]
Mcp = Annotated[
    list[Path] | None,
    typer.Option(
        "--mcp",
        metavar="FILE",
        show_default=False,
        help="Let the model call the tools of the MCP servers in this configuration (JSON: "
        '{"mcpServers": {"NAME": {"command", "args", "env", "cwd"} or {"url", "headers"}}}; repeatable). '
        "They start before the model loads and stop with ossrun.",
    ),
]
McpTimeout = Annotated[
    float | None,
    typer.Option(
        "--mcp-timeout",
        min=0.001,
        metavar="SECONDS",
        show_default=False,
        help=f"How long an MCP server may take to answer a call [default: {DEFAULT_MCP_TIMEOUT:g}; "
        'a server\'s own "timeout" wins].',
    ),
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Run the model's python code and MCP tool calls without asking first.")]
MaxToolRounds = Annotated[
    int,
    typer.Option("--max-tool-rounds", min=0, help="Stop an answer after this many rounds of tool calls."),
]


def pick_model(argument: str | None, option: str | None, demo: bool = False) -> str | None:
    """MODEL may come positionally, as -m/--model or as --demo, once."""
    if argument and option and argument != option:
        raise typer.BadParameter(f"two models given ({argument} and {option}): give one", param_hint="MODEL")
    if demo and (argument or option):
        raise typer.BadParameter(f"--demo and {argument or option} given: give one model", param_hint="MODEL")
    return "demo" if demo else argument or option


def default_model_or_demo() -> tuple[str, str | None]:
    """The default model if it is on disk; else the demo model and a notice saying how to get the real one."""
    from ossrun.errors import ModelError
    from ossrun.store.resolve import resolve_model

    try:
        return resolve_model(None).name, None
    except ModelError as exc:
        return "demo", (
            f"{exc}. Meanwhile, chatting with the tiny demo model that ships with ossrun: "
            "it only adds two-digit numbers, names capitals and checks the weather"
        )


def load_model(
    name: str | None,
    *,
    ctx: Any,
    threads: int | None,
    verbose: bool,
    pull: bool = False,
    parallel: int = 1,
    rpc: list[str] | None = None,
    kv_type: str = DEFAULT_KV_TYPE,
    swa_full: bool = False,
) -> Any:
    """``ossrun.load`` with the command line's options (``name`` None: the registry's default model).

    With ``pull``, a registry model that is not on disk is downloaded first; with ``rpc``, the
    model is loaded over those workers, and where its layers went is said on stderr.
    """
    import sys

    import ossrun
    from ossrun.terminal.progress import file_steps, loading

    with loading(_shown_name(name)) as on_progress, file_steps() as on_file_progress:
        model = ossrun.load(
            name,
            ctx=ctx,
            threads=threads,
            verbose=verbose,
            pull=pull,
            parallel=parallel,
            rpc=rpc or None,
            kv_type=kv_type,
            swa_full=swa_full,
            on_progress=on_progress,
            on_file_progress=on_file_progress,
        )
    if model.placement is not None:
        sys.stderr.write(f"{model.placement}\n")
    return model


def _shown_name(name: str | None) -> str:
    """What ``Model.name`` will be: the registry's name for a name or an alias, a file's name without .gguf."""
    from ossrun.store.resolve import is_model_path

    if name == "demo":
        return name
    if name is not None and is_model_path(name):
        return Path(name).name.removesuffix(".gguf")
    from ossrun.store.registry import load_registry

    registry = load_registry()
    entry = registry.default_entry() if name is None else registry.find(name)
    return entry.name if entry else str(name)


def toolbox(
    functions: list[Path] | None, tools: list[str] | None, mcp: list[Path] | None = None, mcp_timeout: float | None = None
) -> Any:
    """The tools ``--functions``, ``--tool`` and ``--mcp`` give the model, checked (and the MCP servers
    started) before the model loads."""
    from ossrun.tools import Toolbox

    return Toolbox.from_options(functions or (), tools or (), mcp or (), mcp_timeout)


def sampling(temperature: float | None, top_p: float | None, seed: int | None, max_tokens: int | None) -> ReplyOptions:
    """The options of ``Model.stream`` for sampling (None: the model's default)."""
    return ReplyOptions(temperature=temperature, top_p=top_p, seed=seed, max_tokens=max_tokens)


def utf8_text(text: str, what: str, notice: Any) -> str:
    """Command-line text (argv and stdin are decoded with surrogateescape) with bytes that are not
    UTF-8 replaced, saying so through ``notice``: harmony takes valid Unicode only."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        fixed = raw.decode("utf-8", "replace")
        bad = sum(1 for c in text if "\udc80" <= c <= "\udcff")
        notice(f"{what} is not valid UTF-8: {bad} byte{'s' if bad != 1 else ''} replaced with U+FFFD")
        return fixed
