"""The CLI group: version, help, and that no heavy module is imported to show help."""

import subprocess
import sys

from click.testing import CliRunner

from fgdeploy import __version__
from fgdeploy.cli import cli


def test_cli_version_prints_package_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_cli_help_lists_existing_commands_only():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "Commands:" in result.output or "Usage:" in result.output


def test_cli_help_does_not_import_tensorrt_or_onnxruntime():
    code = ("import sys; from click.testing import CliRunner; from fgdeploy.cli import cli; "
            "CliRunner().invoke(cli, ['--help']); "
            "print(','.join(m for m in ('tensorrt', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
