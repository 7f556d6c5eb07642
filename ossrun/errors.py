"""The ossrun error hierarchy.

Every error a user can cause (bad input, missing files, a model that does not
fit) is an OssrunError whose message is one line saying what is wrong and what
to do. The CLI catches them once, in ``ossrun.cli.main``.
"""


class OssrunError(Exception):
    """An error meant for the user: printed as one line, exit code 1."""

    exit_code = 1


class ConvertError(OssrunError):
    """A checkpoint that cannot be converted, or a conversion that failed."""


class VocabError(OssrunError):
    """A vocabulary or tokenizer file that cannot be read or does not fit the model."""


class ModelError(OssrunError):
    """A model file that cannot be used: missing, not gpt-oss, damaged, too big."""


class ContextError(OssrunError):
    """A prompt that does not fit the model's context, even with the oldest turns dropped."""


class RegistryError(OssrunError):
    """A bad models.toml entry or an unknown model name."""


class DownloadError(OssrunError):
    """A download that cannot start, did not finish or does not verify."""


class ConversationError(OssrunError):
    """A conversation that cannot be loaded, saved or continued."""


class ToolError(OssrunError):
    """A tool that cannot be declared or loaded: a bad --functions file, an unusable signature."""


class WorkerError(OssrunError):
    """A worker (``--rpc``) that cannot be used: unreachable, busy, of another version; a bad --rpc value."""


class McpError(ToolError):
    """An MCP server that cannot be used: a bad configuration, a server that does not start or does not speak MCP."""
