"""ossrun's errors as the APIs answer them: the one mapping of the routes, their streams and ``ossrun batch``.

An :class:`~ossrun.server.fields.ApiError` is answered as it is, in OpenAI's shape or on Anthropic's
routes in its own (``ApiError.answer``, ``ApiError.anthropic``). A library error
(:class:`ossrun.errors.OssrunError`) becomes one first: a prompt longer than the context is a 400
``context_length_exceeded`` about ``messages``; a schema past the grammar bounds, or tools that
cannot be declared, a 400 naming their field; any other a 400 with the library's one-line message.
A streamed reply that fails ends with that error as its API's last event, about no field of the
request, which was accepted (:func:`stream_error`); a Responses stream's ``response.failed``
carries a code of its own (:func:`response_failure`).
"""

from __future__ import annotations

from ossrun.errors import ContextError, OssrunError, ToolError
from ossrun.limits import SchemaError
from ossrun.server.fields import ApiError, bad_request

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


def api_error(exc: ApiError | OssrunError, *, param: str | None = None, code: str | None = None) -> ApiError:
    """The API error for ``exc``. ``param`` and ``code`` name the field a library error is about
    when its type does not say (``/detokenize``: the ids)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ContextError):
        return ApiError(400, str(exc), param="messages", code=CONTEXT_LENGTH_EXCEEDED)
    if isinstance(exc, SchemaError):
        param, code = exc.param, None
    elif isinstance(exc, ToolError):
        param, code = "tools", None
    return bad_request(str(exc), param, code)


def stream_error(exc: OssrunError) -> ApiError:
    """The error that ends a stream already under way: :func:`api_error`'s status, type, code and
    message, naming no field (``param`` null), since the request was accepted before the reply began."""
    error = api_error(exc)
    return ApiError(error.status, error.message, type=error.type, code=error.code)


def response_failure(error: ApiError) -> tuple[str, str]:
    """(code, message) of the ``response.failed`` event that ends a Responses stream: ``server_error``
    when the server failed, ``context_length_exceeded`` for a prompt over the context, else
    ``invalid_prompt``."""
    if error.status >= 500:
        return "server_error", error.message
    return (CONTEXT_LENGTH_EXCEEDED if error.code == CONTEXT_LENGTH_EXCEEDED else "invalid_prompt"), error.message
