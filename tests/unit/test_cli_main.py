"""The console script's error handling: usage errors and user errors are one line and exit 2, never a traceback."""

import pytest

from candgen.cli.main import main


@pytest.mark.parametrize(
    "argv",
    [["evaluate", "x", "--no-such-flag"], ["train"], ["nonsense-command"], ["recommend", "x", "--k", "many"]],
)
def test_usage_errors_exit_2_without_traceback(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err


def test_version_runs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["version"])
    assert e.value.code == 0
    assert "candgen" in capsys.readouterr().out
