import pytest

from models.dataset import DatasetError, load_records


def test_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"intent":"a","calls":1}\n\n{"intent":"","calls":1}\n')
    with pytest.raises(DatasetError, match=r"x.jsonl:3: intent"):
        load_records(f)
