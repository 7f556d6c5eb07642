"""ossrun: run OpenAI's open-weight gpt-oss models locally on CPUs."""

__version__ = "0.1.0"
