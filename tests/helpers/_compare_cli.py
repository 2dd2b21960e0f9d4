"""Running `regplug compare` in-process and reading its output, for the compare tests."""

from __future__ import annotations

from regplug import cli

TABLE_COLUMNS = ["framework", "strategy", "acc_train", "acc_test", "pct_diff", "epochs",
                 "zeros", "penalty"]


def table_rows(out: str) -> list[list[str]]:
    """The printed table's rows (after its header line), split into cells."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == TABLE_COLUMNS)
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``regplug compare ARGS``: exit code, stdout, stderr."""
    code = cli.main(["compare", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """Exit code 2 and a single ``regplug: error: ...`` line containing every fragment."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regplug: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
