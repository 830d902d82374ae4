"""Plain-text table formatting."""

from __future__ import annotations

import pytest

from nki_moe.tables import concat_columns, format_table


def test_format_table_alignment_and_numbers():
    rows = [("a", 1234567, 0.5), ("bb", 3, 12.25), ("c", None, 1.0)]
    text = format_table(rows, ["name", "n", "x"], floatfmt=".2f", title="T")
    lines = text.splitlines()
    assert lines[0] == "T" and lines[1].split() == ["name", "n", "x"]
    assert lines[3] == "a     1,234,567   0.50"
    assert lines[4] == "bb            3  12.25"
    assert lines[5] == "c             -   1.00"


def test_format_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="row 1 has 1 cells"):
        format_table([(1, 2), (3,)], ["a", "b"])


def test_concat_columns():
    assert concat_columns({"a": [1], "b": [2]}, {"a": [3], "b": [4]}) == {"a": [1, 3], "b": [2, 4]}
    with pytest.raises(ValueError, match="column names differ"):
        concat_columns({"a": [1]}, {"b": [1]})
