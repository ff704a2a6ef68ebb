"""Bad images give one MediaError naming the file and the reason."""

import pytest
import torch

import anymodal as am
from anymodal.media import MediaLimits, image_size, load_image


def test_load_png_and_header_size(png):
    x = load_image(png)
    assert x.shape == (3, 24, 40) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert image_size(png) == (24, 40)


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "truncated", "text_as_png", "too_big", "pdf"])
def test_bad_images_raise_media_error(tmp_path, png, case):
    p = tmp_path / f"{case}.png"
    limits = MediaLimits()
    if case == "missing":
        reason = "not found"
    elif case == "empty":
        p.write_bytes(b"")
        reason = "empty"
    elif case == "garbage":
        p.write_bytes(bytes(range(256)) * 4)
        reason = "identify"
    elif case == "truncated":
        data = png.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        reason = "decode|truncated|cannot"
    elif case == "text_as_png":
        p.write_text("hello, I am not an image")
        reason = "identify"
    elif case == "too_big":
        p.write_bytes(png.read_bytes())
        limits = MediaLimits(max_pixels=100)
        reason = "over the limit"
    else:
        p.write_bytes(b"%PDF-1.4\n%" + b"x" * 100)
        reason = "identify"
    with pytest.raises(am.MediaError, match=reason) as ei:
        load_image(p, limits=limits)
    assert str(p) in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_tensor_inputs():
    assert load_image(torch.zeros(1, 4, 5)).shape == (3, 4, 5)
    assert load_image(torch.full((3, 2, 2), 255, dtype=torch.uint8)).max() == 1.0
    with pytest.raises(am.MediaError, match="<Tensor>"):
        load_image(torch.zeros(4, 5))
