import json

import pytest

import anymodal as am
from anymodal.data import read_manifest


def _write(tmp_path, lines):
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


GOOD = json.dumps({"segments": [{"type": "text", "text": "hi"}, {"type": "image", "path": "a.png"}]})


def test_reads_records_and_resolves_paths(tmp_path):
    recs = read_manifest(_write(tmp_path, [GOOD, GOOD]))
    assert len(recs) == 2 and recs[0].segments[1].data == str(tmp_path / "a.png")


@pytest.mark.parametrize("bad,reason", [("", "empty line"), ("{not json", "not valid JSON"), ("[1]", "object"),
                                        ('{"segments": []}', "non-empty"),
                                        ('{"segments": [{"type": "image"}]}', "bad segment")])
def test_bad_lines_name_file_and_line(tmp_path, bad, reason):
    p = _write(tmp_path, [GOOD, bad, GOOD])
    with pytest.raises(am.ManifestError, match=reason) as ei:
        read_manifest(p)
    assert str(ei.value).startswith(f"{p}:2:")
