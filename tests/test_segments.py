import pytest
import torch

import anymodal as am
from anymodal.segments import segment_from_dict, to_segments


def test_plain_strings_become_text():
    segs = to_segments(["hi", am.Image(torch.rand(3, 8, 8)), am.Text("ok", role="target")])
    assert [s.modality for s in segs] == ["text", "image", "text"]
    assert segs[0].text == "hi" and segs[2].role == "target"


def test_chat_messages_are_converted(tmp_path):
    msgs = [
        {"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image", "path": "a.png"}]},
        {"role": "assistant", "content": "circle"},
    ]
    segs = to_segments(msgs)
    assert [(s.modality, s.role) for s in segs] == [("text", "prompt"), ("image", "prompt"), ("text", "target")]
    assert segs[1].data == "a.png"


def test_relative_paths_resolve_against_base(tmp_path):
    s = segment_from_dict({"type": "image", "path": "x/a.png"}, tmp_path)
    assert s.data == str(tmp_path / "x" / "a.png")


def test_bad_role_and_missing_fields():
    with pytest.raises(ValueError, match="role"):
        am.Text("x", role="assistant")
    with pytest.raises(ValueError, match="no 'type'"):
        segment_from_dict({"text": "x"})
    with pytest.raises(ValueError, match="no 'path'"):
        segment_from_dict({"type": "image"})
    with pytest.raises(TypeError):
        to_segments([3.5])


def test_segment_from_dict_is_public():
    assert am.segment_from_dict is segment_from_dict and "segment_from_dict" in am.__all__
    assert am.segment_from_dict({"type": "text", "text": "hi", "role": "target"}).role == "target"


def test_generated_segments_say_so():
    from anymodal.model import debug

    model = am.AnyModal(["text.bytes"], debug())
    (seg,) = model.generate(["hi"], max_new_tokens=3, seed=0, stop_at_eos=False).segments
    assert seg.generated and seg.role == "target"
    assert repr(seg).endswith("role='target', generated=True)")
    assert repr(am.Text("hi")) == "Text('hi', role='prompt')"  # what the user writes stays as it was
