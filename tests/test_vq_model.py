"""MAGVIT-v2 module tree vs the official checkpoint layout, token counts, and checkpoint I/O.

The official layout below is written out by hand from the showlab/magvitv2 module tree
(docs/model.md and Show-o's modeling_magvitv2.py: VQGANEncoder/VQGANDecoder built
from taming-style ResnetBlock/AttnBlock/Downsample/Upsample, LFQuantizer buffers), independently
of mmada.models.vq's construction code.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from mmada.errors import ConfigError, MMaDAError
from mmada.models.vq import CheckpointError, MAGVITv2, VQConfig

# ----------------------------------------------------------------------------- official layout
# (level index, in channels, out channels, residual blocks, has down/upsample)
ENC_LEVELS = [(0, 128, 128, 4, True), (1, 128, 256, 3, True), (2, 256, 256, 4, True), (3, 256, 512, 3, True),
              (4, 512, 512, 4, False)]
# Decoder levels in the order they run (coarsest first); up.0 is the full-resolution level.
DEC_LEVELS = [(4, 512, 512, 3, True), (3, 512, 256, 4, True), (2, 256, 256, 3, True), (1, 256, 128, 4, True),
              (0, 128, 128, 4, False)]


def _conv(d, name, cin, cout, k):
    d[f"{name}.weight"] = (cout, cin, k, k)
    d[f"{name}.bias"] = (cout,)


def _norm(d, name, c):
    d[f"{name}.weight"] = (c,)
    d[f"{name}.bias"] = (c,)


def _resblock(d, name, cin, cout):
    _norm(d, f"{name}.norm1", cin)
    _conv(d, f"{name}.conv1", cin, cout, 3)
    _norm(d, f"{name}.norm2", cout)
    _conv(d, f"{name}.conv2", cout, cout, 3)
    if cin != cout:
        _conv(d, f"{name}.nin_shortcut", cin, cout, 1)


def _attn(d, name, c):
    _norm(d, f"{name}.norm", c)
    for p in ("q", "k", "v", "proj_out"):
        _conv(d, f"{name}.{p}", c, c, 1)


def official_layout() -> dict[str, tuple[int, ...]]:
    d: dict[str, tuple[int, ...]] = {}
    _conv(d, "encoder.conv_in", 3, 128, 3)
    for i, cin, cout, n, down in ENC_LEVELS:
        for j in range(n):
            _resblock(d, f"encoder.down.{i}.block.{j}", cin if j == 0 else cout, cout)
        if down:
            _conv(d, f"encoder.down.{i}.downsample.conv", cout, cout, 3)
    _resblock(d, "encoder.mid.block_1", 512, 512)
    _attn(d, "encoder.mid.attn_1", 512)
    _resblock(d, "encoder.mid.block_2", 512, 512)
    _norm(d, "encoder.norm_out", 512)
    _conv(d, "encoder.conv_out", 512, 13, 3)
    _conv(d, "encoder.quant_conv", 13, 13, 1)
    _conv(d, "decoder.conv_in", 13, 512, 3)
    _resblock(d, "decoder.mid.block_1", 512, 512)
    _attn(d, "decoder.mid.attn_1", 512)
    _resblock(d, "decoder.mid.block_2", 512, 512)
    for i, cin, cout, n, up in DEC_LEVELS:
        for j in range(n):
            _resblock(d, f"decoder.up.{i}.block.{j}", cin if j == 0 else cout, cout)
        if up:
            _conv(d, f"decoder.up.{i}.upsample.conv", cout, cout, 3)
    _norm(d, "decoder.norm_out", 128)
    _conv(d, "decoder.conv_out", 128, 3, 3)
    _conv(d, "decoder.post_quant_conv", 13, 13, 1)
    d["quantize.embedding"] = (8192, 13)
    d["quantize.power_vals"] = (13,)
    return d


OFFICIAL = official_layout()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny convolutions gain little from a second thread, and on a shared 2-core machine two
    OpenMP threads fighting other processes can run 10× slower; one thread keeps timings stable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def official_buffers() -> dict[str, torch.Tensor]:
    """The LFQ buffers by brute force: row i = bits of i (MSB first) as ±1; powers 4096 … 1."""
    rows = [[1.0 if c == "1" else -1.0 for c in format(i, "013b")] for i in range(8192)]
    return {"quantize.embedding": torch.tensor(rows), "quantize.power_vals": torch.tensor([2**p for p in range(12, -1, -1)])}


@pytest.fixture(scope="module")
def official_model() -> MAGVITv2:
    torch.manual_seed(0)
    return MAGVITv2()


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in OFFICIAL.items() if not k.startswith("quantize.")}
    state.update(official_buffers())
    return state


# ----------------------------------------------------------------------------- layout
def test_state_dict_matches_official_layout(official_model):
    sd = official_model.state_dict()
    assert set(sd) == set(OFFICIAL)
    wrong = {k: (tuple(v.shape), OFFICIAL[k]) for k, v in sd.items() if tuple(v.shape) != OFFICIAL[k]}
    assert wrong == {}
    assert sd["quantize.power_vals"].dtype == torch.int64 and sd["quantize.embedding"].dtype == torch.float32
    n_params = sum(torch.Size(s).numel() for k, s in OFFICIAL.items() if not k.startswith("quantize."))
    assert sum(p.numel() for p in official_model.parameters()) == n_params
    assert official_model.codebook_size == 8192 and official_model.downsample_factor == 16


def test_official_buffers_are_the_msb_first_codebook(official_model):
    for k, v in official_buffers().items():
        assert torch.equal(official_model.state_dict()[k], v)


@pytest.mark.parametrize("res,tokens", [(256, 256), (512, 1024)])
def test_official_token_counts(res, tokens):
    with torch.device("meta"):
        model = MAGVITv2()
        codes = model.encode(torch.empty(2, 3, res, res))
        assert codes.shape == (2, tokens)
        pixels = model.decode(torch.zeros(2, tokens, dtype=torch.long))
        assert pixels.shape == (2, 3, res, res)


def test_official_real_forward_small(official_model):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    codes = official_model.encode(x)
    assert codes.shape == (1, 4) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 8192
    rec = official_model.decode(codes)
    assert rec.shape == (1, 3, 32, 32) and float(rec.abs().max()) <= 1.0
    # Codes are the sign pattern of the encoder output, packed MSB first (brute force).
    z = official_model.encoder(x)[0]  # (13, 2, 2)
    expected = [int("".join("1" if z[c, i, j] > 0 else "0" for c in range(13)), 2) for i in range(2) for j in range(2)]
    assert codes[0].tolist() == expected


# ----------------------------------------------------------------------------- official checkpoint I/O
OFFICIAL_CONFIG = {"_class_name": "MAGVITv2", "_version": "0.0.1"}


@pytest.fixture(scope="module")
def official_random_state() -> dict[str, torch.Tensor]:
    return official_state(seed=3)


@pytest.mark.parametrize("weights_name", ["pytorch_model.bin", "model.safetensors"])
def test_official_layout_checkpoint_loads_strictly(tmp_path, weights_name, official_random_state):
    state = official_random_state
    (tmp_path / "config.json").write_text(json.dumps(OFFICIAL_CONFIG))
    if weights_name.endswith(".bin"):
        torch.save(state, tmp_path / weights_name)
    else:
        save_file(state, str(tmp_path / weights_name))
    model = MAGVITv2.from_pretrained(tmp_path)
    assert model.config == VQConfig()
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not model.training


def test_save_load_round_trip_is_bit_exact(tmp_path):
    cfg = VQConfig(ch=32, ch_mult=(1, 2), num_res_blocks=(1, 1), dec_ch_mult=(1, 2), dec_num_res_blocks=(1, 1),
                   attn_resolutions=(8,), resolution=16, z_channels=6, norm_groups=8)
    torch.manual_seed(0)
    model = MAGVITv2(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # not just the init distribution
    path = model.save_pretrained(tmp_path / "export", extra={"_note": "test"})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    again = MAGVITv2.from_pretrained(path)
    assert again.config == cfg
    a, b = model.state_dict(), again.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(model.encode(x), again.encode(x))
    assert torch.equal(model.decode(model.encode(x)), again.decode(again.encode(x)))
    # Saving again over an existing export replaces it atomically.
    model.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- bad checkpoints
SMALL = VQConfig(ch=8, ch_mult=(1, 1), num_res_blocks=(1, 1), dec_ch_mult=(1, 1), dec_num_res_blocks=(1, 1),
                 attn_resolutions=(), resolution=8, z_channels=4, norm_groups=4)


def _small_dir(tmp_path, mutate=None, config=None):
    state = MAGVITv2(SMALL).state_dict()
    if mutate:
        mutate(state)
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config if config is not None else {"_class_name": "MAGVITv2",
                                                                                 **SMALL.to_json_dict()}))
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "model.safetensors"))
    return d


def test_missing_and_unexpected_keys_are_named(tmp_path):
    def mutate(s):
        s.pop("decoder.conv_out.bias")
        s["encoder.extra.weight"] = torch.zeros(1)

    with pytest.raises(CheckpointError, match=r"missing keys \['decoder.conv_out.bias'\].*unexpected keys \['encoder.extra.weight'\]"):
        MAGVITv2.from_pretrained(_small_dir(tmp_path, mutate))


def test_wrong_shape_is_named(tmp_path):
    def mutate(s):
        s["encoder.conv_in.weight"] = torch.zeros(8, 3, 1, 1)

    with pytest.raises(CheckpointError, match=r"encoder\.conv_in\.weight"):
        MAGVITv2.from_pretrained(_small_dir(tmp_path, mutate))


def test_official_weights_into_wrong_config_fail(tmp_path):
    # An official-layout config (no fields) with small weights: every key mismatches in shape.
    with pytest.raises(CheckpointError, match=r"wrong shape|missing keys"):
        MAGVITv2.from_pretrained(_small_dir(tmp_path, config=OFFICIAL_CONFIG))


def test_non_canonical_codebook_is_refused(tmp_path):
    def mutate(s):
        s["quantize.power_vals"] = s["quantize.power_vals"].flip(0)  # LSB-first convention

    with pytest.raises(CheckpointError, match="MSB-first"):
        MAGVITv2.from_pretrained(_small_dir(tmp_path, mutate))


def test_unknown_config_field_and_class_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="z_chanels"):
        MAGVITv2.from_pretrained(_small_dir(tmp_path, config={"_class_name": "MAGVITv2", "z_chanels": 4}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(CheckpointError, match="UNet2DModel"):
        MAGVITv2.from_pretrained(tmp_path / "b")


def test_corrupt_or_missing_files(tmp_path):
    d = _small_dir(tmp_path)
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="cannot read weights"):
        MAGVITv2.from_pretrained(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file"):
        MAGVITv2.from_pretrained(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        MAGVITv2.from_pretrained(d)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        MAGVITv2.from_pretrained(tmp_path / "nope")


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_pickle_with_objects_is_refused(tmp_path):
    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"_class_name": "MAGVITv2", **SMALL.to_json_dict()}))
    with open(d / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"encoder.conv_in.weight": _Evil()}, fh)
    with pytest.raises(CheckpointError, match=r"refused or corrupt pickle|cannot read weights"):
        MAGVITv2.from_pretrained(d)


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="could not be fetched"):
        MAGVITv2.from_pretrained("no-such-owner-mmada/no-such-repo")


def test_invalid_configs_raise_config_errors():
    with pytest.raises(MMaDAError, match="norm_groups"):
        MAGVITv2({"ch": 30})
    with pytest.raises(MMaDAError, match="same factor"):
        MAGVITv2({"ch_mult": [1, 2], "num_res_blocks": [1, 1]})


def _cached_official_dir():
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download("showlab/magvitv2", local_files_only=True)
    except Exception:
        return None


@pytest.mark.slow
@pytest.mark.skipif(_cached_official_dir() is None, reason="showlab/magvitv2 is not in the local Hugging Face cache")
def test_real_official_weights_reconstruct_an_image():
    from mmada.data.vq import shapes_images

    model = MAGVITv2.from_pretrained(_cached_official_dir())
    x = model.preprocess(shapes_images(1, seed=0, image_size=256), resolution=256)
    codes = model.encode(x)
    assert codes.shape == (1, 256)
    rec = model.decode(codes)
    assert (10 * torch.log10(4 / (rec - x).pow(2).mean())).item() > 20
