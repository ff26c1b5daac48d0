"""Preprocessing and bad input: image modes/sizes, corrupt files, pixel and code validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmada.models.vq import (
    ImageInputError,
    MAGVITv2,
    TokenizerInputError,
    VQConfig,
    encode_images,
    images_to_tensor,
    load_image,
    tensor_to_images,
)

SMALL = VQConfig(ch=8, ch_mult=(1, 1, 1), num_res_blocks=(1, 1, 1), dec_ch_mult=(1, 1, 1), dec_num_res_blocks=(1, 1, 1),
                 attn_resolutions=(), resolution=16, z_channels=5, norm_groups=4)


@pytest.fixture(scope="module")
def small() -> MAGVITv2:
    torch.manual_seed(0)
    return MAGVITv2(SMALL).eval()


# ----------------------------------------------------------------------------- preprocessing
def test_normalisation_is_x_over_127_5_minus_1():
    img = Image.fromarray(np.array([[[0, 255, 51]] * 2] * 2, dtype=np.uint8), "RGB")
    t = images_to_tensor([img], 2, mode="none")
    assert t.shape == (1, 3, 2, 2)
    assert torch.allclose(t[0, :, 0, 0], torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))


def test_crop_keeps_the_centre_of_a_wide_image():
    # 64×32: red | green (32 px wide, centred) | blue. Shorter side is already 32, so crop only.
    a = np.zeros((32, 64, 3), np.uint8)
    a[:, :16] = (255, 0, 0)
    a[:, 16:48] = (0, 255, 0)
    a[:, 48:] = (0, 0, 255)
    t = images_to_tensor([Image.fromarray(a)], 32, mode="crop")
    assert torch.equal(t[0, 1], torch.ones(32, 32)) and torch.equal(t[0, 0], -torch.ones(32, 32))
    # squash keeps all three bands (resampled): left column red, right column blue
    s = images_to_tensor([Image.fromarray(a)], 32, mode="squash")[0]
    assert s[0, :, 0].min() > 0.9 and s[2, :, -1].min() > 0.9 and s[1, :, 16].min() > 0.9


def test_crop_resizes_shorter_side_of_a_tall_image():
    img = Image.new("RGB", (20, 50), (10, 20, 30))
    t = images_to_tensor([img], 16, mode="crop")
    assert t.shape == (1, 3, 16, 16)
    assert torch.allclose(t[0, :, 8, 8], torch.tensor([10, 20, 30]) / 127.5 - 1, atol=1 / 127.5)


def test_grayscale_becomes_three_equal_channels():
    g = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L")
    t = images_to_tensor([g], 8, mode="none")[0]
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
    assert t[0, 0, 1].item() == pytest.approx(4 / 127.5 - 1)


def test_alpha_is_composited_over_black():
    rgba = Image.new("RGBA", (4, 4), (200, 100, 50, 0))  # fully transparent, colour hidden underneath
    rgba.putpixel((1, 1), (200, 100, 50, 255))
    rgba.putpixel((2, 2), (200, 100, 50, 51))  # 20 % opaque
    t = images_to_tensor([rgba], 4, mode="none")[0]
    assert torch.equal(t[:, 0, 0], torch.full((3,), -1.0))  # transparent → black, not the hidden colour
    assert torch.allclose(t[:, 1, 1], torch.tensor([200, 100, 50]) / 127.5 - 1)
    assert torch.allclose(t[:, 2, 2], torch.tensor([40, 20, 10]) / 127.5 - 1, atol=1.01 / 127.5)
    la = Image.new("LA", (2, 2), (255, 0))
    assert torch.equal(images_to_tensor([la], 2, mode="none"), -torch.ones(1, 3, 2, 2))


def test_palette_with_transparency_and_high_bit_depth_modes():
    p = Image.new("P", (2, 2), 1)
    p.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    p.info["transparency"] = 1
    assert torch.equal(images_to_tensor([p], 2, mode="none"), -torch.ones(1, 3, 2, 2))
    for mode in ("I;16", "I", "F"):
        with pytest.raises(ImageInputError, match=f"unsupported image mode '{mode}'"):
            images_to_tensor([Image.new(mode, (4, 4))], 4)


def test_wrong_size_under_mode_none_and_bad_mode():
    with pytest.raises(ImageInputError, match=r"image 1: size 8×4 but resize mode 'none' needs 8×8"):
        images_to_tensor([Image.new("RGB", (8, 8)), Image.new("RGB", (8, 4))], 8, mode="none")
    with pytest.raises(ImageInputError, match="unknown resize mode"):
        images_to_tensor([Image.new("RGB", (8, 8))], 8, mode="stretch")
    with pytest.raises(ImageInputError, match="multiple of 16"):
        images_to_tensor([Image.new("RGB", (8, 8))], 24, multiple_of=16)


def test_corrupt_truncated_and_missing_files(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageInputError, match=r"junk\.png: not a readable image"):
        load_image(tmp_path / "junk.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageInputError, match=r"cut\.png"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageInputError, match="no such image file"):
        load_image(tmp_path / "absent.png")
    assert load_image(tmp_path / "ok.png").size == (64, 64)


def test_tensor_to_images_round_trips_8bit_values():
    a = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    t = torch.from_numpy(a.transpose(2, 0, 1)[None].astype(np.float32) / 127.5 - 1)
    assert np.array_equal(np.asarray(tensor_to_images(t)[0]), a)


# ----------------------------------------------------------------------------- model inputs
def test_encode_rejects_unnormalised_or_misshapen_pixels(small):
    good = torch.zeros(1, 3, 16, 16)
    assert small.encode(good).shape == (1, 16)
    with pytest.raises(TokenizerInputError, match=r"normalised to \[-1, 1\].*255"):
        small.encode(torch.full((1, 3, 16, 16), 255.0))
    with pytest.raises(TokenizerInputError, match="floating point"):
        small.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(TokenizerInputError, match=r"shape \(B, 3, H, W\)"):
        small.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(TokenizerInputError, match=r"shape \(B, 3, H, W\)"):
        small.encode(torch.zeros(3, 16, 16))
    with pytest.raises(TokenizerInputError, match="multiples of the downsampling factor 4, got 18×16"):
        small.encode(torch.zeros(1, 3, 18, 16))
    with pytest.raises(TokenizerInputError, match="NaN"):
        small.encode(torch.full((1, 3, 16, 16), float("nan")))


def test_decode_rejects_bad_codes(small):
    ok = torch.tensor([[0, 31, 5, 7]])
    assert small.decode(ok).shape == (1, 3, 8, 8)
    assert small.decode(np.array([[0, 31, 5, 7, 1, 2]], dtype=np.int16), shape=(2, 3)).shape == (1, 3, 8, 12)
    with pytest.raises(TokenizerInputError, match=r"\[0, 32\).*\[0, 32\]"):
        small.decode(torch.tensor([[0, 32, 1, 1]]))
    with pytest.raises(TokenizerInputError, match=r"\[-1, 5\]"):
        small.decode(torch.tensor([[-1, 5, 1, 1]]))
    with pytest.raises(TokenizerInputError, match="integer dtype"):
        small.decode(torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
    with pytest.raises(TokenizerInputError, match="not a square grid"):
        small.decode(torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(TokenizerInputError, match="does not hold 4 codes"):
        small.decode(ok, shape=(2, 3))
    with pytest.raises(TokenizerInputError, match=r"\(B, h·w\)"):
        small.decode(torch.zeros(4, dtype=torch.long))


# ----------------------------------------------------------------------------- pre-tokenization
def test_encode_images_matches_model_encode_and_is_batch_invariant(small):
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
            [(16, 16), (20, 30), (40, 16), (16, 16), (17, 19)]]
    imgs.append(Image.new("L", (16, 16), 99))
    codes = encode_images(small, iter(imgs), batch_size=4)
    assert codes.shape == (6, 16) and codes.dtype == np.int16
    ref = small.encode(images_to_tensor(imgs, 16)).numpy()
    assert np.array_equal(codes, ref)
    assert np.array_equal(encode_images(small, imgs, batch_size=1), codes)
    assert np.array_equal(encode_images(small, imgs, resolution=32, mode="squash").shape, (6, 64))
    assert encode_images(small, []).shape == (0, 16)


def test_encode_images_errors_name_the_image(small):
    with pytest.raises(ImageInputError, match="image 2: expected a PIL image"):
        encode_images(small, [Image.new("RGB", (16, 16))] * 2 + ["x.png"], batch_size=2)
    with pytest.raises(ImageInputError, match="image 1: unsupported image mode 'F'"):
        encode_images(small, [Image.new("RGB", (16, 16)), Image.new("F", (16, 16))])
    with pytest.raises(Exception, match="multiple of the tokenizer's downsampling factor 4"):
        encode_images(small, [Image.new("RGB", (16, 16))], resolution=18)
    with pytest.raises(Exception, match="not a torch device"):
        encode_images(small, [Image.new("RGB", (16, 16))], device="gpu0")
