"""ossrun: run OpenAI's open-weight gpt-oss models locally on CPUs."""

__version__ = "0.1.0"

__all__ = ["load", "plan"]


def __getattr__(name: str):
    # ``import ossrun`` stays cheap: the model API (and llama.cpp) load on first use.
    if name in ("load", "plan"):
        from ossrun import model

        return getattr(model, name)
    raise AttributeError(f"module 'ossrun' has no attribute {name!r}")
