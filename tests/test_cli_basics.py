import subprocess
import sys

import ossrun


def ossrun_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "ossrun", *args], capture_output=True, text=True, **kwargs)


def test_version():
    result = ossrun_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ossrun {ossrun.__version__}"


def test_help_lists_usage():
    result = ossrun_cli("--help")
    assert result.returncode == 0
    assert "Usage: ossrun" in result.stdout


def test_unknown_command_is_a_usage_error():
    result = ossrun_cli("no-such-command")
    assert result.returncode == 2
    assert "Usage:" in result.stderr
    assert "Traceback" not in result.stderr
