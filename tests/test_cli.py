"""The CLI group: version, help, and that no heavy module is imported to show help."""

import subprocess
import sys

import pytest
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


# --------------------------------------------------------------------------------------------
# user errors: a one-line message and an exit code, never a traceback
@pytest.fixture
def model_files(tmp_path, monkeypatch):
    """A working directory holding m.pt and m.onnx, stand-ins that are not models (the device is refused first)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.pt").write_bytes(b"x")
    (tmp_path / "m.onnx").write_bytes(b"\x08x")
    return tmp_path


@pytest.mark.parametrize("command", [["infer", "imgs", "--model", "m.pt"], ["eval", "m.pt"],
                                     ["bench", "--model", "m.pt"], ["train"], ["demo"],
                                     ["parity", "--ref", "torch:m.pt", "--test", "onnx:m.onnx"]])
def test_cli_bad_device_is_a_usage_error_naming_the_choices(model_files, command):
    result = CliRunner().invoke(cli, [*command, "--device", "tpu"])
    assert result.exit_code == 2, result.output
    assert "'tpu' is not a device; use" in result.output and "cuda:N" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


OPENVINO_ONLY = "--device gpu is an OpenVINO device: use it with --backend openvino"   # commands with --backend
NOT_A_DEVICE = "'gpu' is not a device"                                                 # commands without


@pytest.mark.parametrize("command, expected", [
    (["infer", "imgs", "--model", "m.onnx"], OPENVINO_ONLY), (["bench", "--model", "m.onnx"], OPENVINO_ONLY),
    (["parity", "--ref", "onnx:m.onnx", "--test", "onnx:m.onnx"], OPENVINO_ONLY),
    (["train"], NOT_A_DEVICE), (["eval", "m.pt"], NOT_A_DEVICE)])
def test_cli_openvino_device_without_openvino_backend_is_a_usage_error(model_files, command, expected):
    result = CliRunner().invoke(cli, [*command, "--device", "gpu"])
    assert result.exit_code == 2, result.output
    assert expected in result.output, result.output


@pytest.mark.parametrize("name", ["demo", "train", "eval", "parity", "infer", "bench"])
def test_cli_device_default_is_auto_on_every_command(name):
    """Issue 17 #11: parity defaulted to cpu and rejected auto; train's None means auto."""
    import click

    command = cli.get_command(click.Context(cli), name)
    device = next(p for p in command.params if p.name == "device")
    assert device.default in ("auto", None) and "auto" in device.help
    assert device.callback(None, device, "auto") == "auto"


def test_cli_output_under_a_file_is_one_line_error_with_the_path(tmp_path):
    (tmp_path / "notdir").write_text("a file, not a folder")
    result = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "notdir" / "set"), "--classes", "2",
                                      "--images-per-class", "1", "--size", "64"])
    assert result.exit_code == 2, result.output   # issue 17 #7: checked as a bad option, before any work
    assert f"{tmp_path / 'notdir'} is a file, so {tmp_path / 'notdir' / 'set'} cannot be created under it" \
        in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not isinstance(result.exception, OSError)   # turned into a ClickException, not raised


def test_cli_describe_os_error_names_both_paths_and_what_failed():
    from fgdeploy.cli import _describe_os_error

    message = _describe_os_error(FileExistsError(17, "File exists", "/runs/notdir"))
    assert message.startswith("/runs/notdir: File exists; check that the path")
    assert "traceback" in _describe_os_error(OSError("disk on fire"))


def test_cli_infer_results_file_must_be_csv_or_jsonl(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["infer", str(tmp_path), "--model", str(tmp_path / "m.pt"),
                                      "--out", str(tmp_path / "r.txt")])
    assert result.exit_code == 2 and "name the results file .csv or .jsonl" in result.output


@pytest.mark.parametrize("command", [["infer", "imgs", "--model", "m.onnx", "--compile", "default"],
                                     ["bench", "--model", "m.onnx", "--channels-last"]])
def test_cli_torch_only_flags_with_only_onnx_models_are_usage_errors(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"x")
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 2, result.output
    assert "for the torch backend" in result.output or "for torch models" in result.output


def test_cli_export_opset_out_of_range_is_a_usage_error(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "m.pt"), "-o", str(tmp_path / "m.onnx"),
                                      "--opset", "12"])
    assert result.exit_code == 2 and "18<=x<=21" in result.output.replace(" ", "")


def test_compile_choices_of_the_cli_are_the_fast_path_modes():
    from fgdeploy.commands.options import COMPILE_CHOICES
    from fgdeploy.inference.fastpath import COMPILE_MODES

    assert COMPILE_CHOICES == COMPILE_MODES


# --------------------------------------------------------------------------------------------
# issue 17: one consistent CLI
def test_cli_help_shows_each_command_description_whole():
    result = CliRunner().invoke(cli, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "Train a pose-normalized classifier in the paper's four stages (runs under torchrun too)." in result.output
    commands = result.output.split("Commands:")[1]
    assert "..." not in commands   # click cut each description at 45 characters with "..."


@pytest.mark.parametrize("args", [["eval", "--bogus"], ["data", "synth"], ["--bogus"], ["infer", "x", "--model"]])
def test_cli_usage_errors_are_one_line_with_exit_2(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--help" in lines[0], result.output


def test_cli_verbosity_after_the_command_is_accepted(tmp_path):
    for flag in ("-q", "-v"):
        result = CliRunner().invoke(cli, ["data", "check", str(tmp_path), flag])
        assert result.exit_code == 1 and "No such option" not in result.output, result.output


def test_cli_eval_names_a_bad_checkpoint_before_asking_for_data(tmp_path):
    """#8: `eval notes.txt` without --data complained about the data first."""
    (tmp_path / "notes.txt").write_text("some notes\n")
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "notes.txt")])
    assert result.exit_code == 1 and "is not a PyTorch checkpoint (a text file)" in result.output, result.output
    assert "--data" not in result.output


def test_cli_train_pretrained_text_file_says_so_before_any_work(tmp_path):
    """#8: `train --pretrained notes.txt` printed "(KeyError: 101) ... download it again" after generating data."""
    (tmp_path / "notes.txt").write_text("some notes\n")
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "run"), "--pretrained",
                                      str(tmp_path / "notes.txt")])
    assert result.exit_code == 1, result.output
    assert "--pretrained" in result.output and "is not a PyTorch checkpoint (a text file)" in result.output
    assert "KeyError" not in result.output and not (tmp_path / "run" / "synth-birds").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cli_cuda_unavailable_has_one_wording(tmp_path):
    """#9: infer/bench with an ONNX model and --device cuda suggested a parity option."""
    from fgdeploy.errors import cuda_unavailable

    expected = cuda_unavailable("cuda").split(" on this machine")[0]
    from fgdeploy.data.images import encode_image

    (tmp_path / "a.png").write_bytes(encode_image(__import__("numpy").zeros((8, 8, 3), "uint8"), ".png"))
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x08")
    for args in (["train", "--out", str(tmp_path / "run"), "--device", "cuda"],
                 ["bench", "--model", str(onnx), "--device", "cuda"],
                 ["infer", str(tmp_path), "--model", str(onnx), "--device", "cuda"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and expected in result.output, (args, result.output)
        assert "--providers" not in result.output and "use --device cpu or auto" in result.output
