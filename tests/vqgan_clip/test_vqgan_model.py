"""The taming-compatible VQGAN: weight names, numerics against taming, Lightning checkpoints, safety."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from clipag.adapters.vqgan_clip import checkpoint as vq_checkpoint
from clipag.adapters.vqgan_clip.modules import VectorQuantizer2
from clipag.adapters.vqgan_clip.vqgan import GumbelVQ, VQModel, build_from_config, load_vqgan
from vqgan_fixtures import FIXTURE, TINY, fill_like_fixture, tiny_config, write_lightning_ckpt, write_yaml

from clipag.checkpoints import CheckpointError
from clipag.hub import cache_root


def shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def tiny_vqmodel() -> VQModel:
    return VQModel(TINY["ddconfig"], None, TINY["n_embed"], TINY["embed_dim"]).eval()


def fixture_input() -> torch.Tensor:
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1234)) * 2 - 1


@pytest.mark.parametrize("name, cls", [("vqgan_imagenet_f16_16384", VQModel), ("vqgan_gumbel_f8_8192", GumbelVQ)])
def test_real_architectures_have_taming_weight_names(name, cls):
    """The fixture was recorded from taming's own modules; published checkpoints are keyed by these names."""
    entry = FIXTURE[name]
    with torch.device("meta"):
        model = cls(entry["ddconfig"], None, entry["n_embed"], entry["embed_dim"])
    assert shapes(model) == entry["keys"]


def test_tiny_models_have_taming_weight_names():
    assert shapes(tiny_vqmodel()) == TINY["VQModel"]["keys"]
    gumbel = GumbelVQ(TINY["ddconfig"], None, TINY["n_embed"], TINY["GumbelVQ"]["embed_dim"])
    assert shapes(gumbel) == TINY["GumbelVQ"]["keys"]


def test_outputs_match_taming():
    """Same weights, same input: taming's encoder, quantizer and decoder outputs (recorded) are reproduced."""
    model, ref = tiny_vqmodel(), TINY["VQModel"]
    fill_like_fixture(model)
    with torch.no_grad():
        prequant = model.quant_conv(model.encoder(fixture_input()))
        quant, loss, (_, _, indices) = model.quantize(prequant)
        decoded = model.decode(quant)
    torch.testing.assert_close(prequant.flatten(), torch.tensor(ref["prequant"]), atol=1e-5, rtol=1e-5)
    assert indices.flatten().tolist() == ref["indices"]
    assert loss.item() == pytest.approx(ref["emb_loss"], rel=1e-5)
    torch.testing.assert_close(decoded.flatten(), torch.tensor(ref["decoded"]), atol=1e-5, rtol=1e-5)


def test_gumbel_outputs_match_taming():
    gumbel, ref = GumbelVQ(TINY["ddconfig"], None, TINY["n_embed"], 8).eval(), TINY["GumbelVQ"]
    fill_like_fixture(gumbel)
    with torch.no_grad():
        logits = gumbel.quantize.proj(gumbel.encode_to_prequant(fixture_input()))
        z_q = gumbel.quantize.get_codebook_entry(logits.argmax(1).flatten(), (1, 8, 8, 8))
        decoded = gumbel.decode(z_q)
    torch.testing.assert_close(logits.flatten(), torch.tensor(ref["logits"]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(decoded.flatten(), torch.tensor(ref["decoded_argmax"]), atol=1e-5, rtol=1e-5)


def test_encode_decode_shapes():
    model = tiny_vqmodel()
    assert model.downsample_factor == 2
    quant, _, (_, _, indices) = model.encode(torch.randn(2, 3, 16, 24))
    assert quant.shape == (2, TINY["embed_dim"], 8, 12) and indices.shape == (2 * 8 * 12,)
    assert model.decode(quant).shape == (2, 3, 16, 24)
    torch.testing.assert_close(quant.permute(0, 2, 3, 1).reshape(-1, TINY["embed_dim"]), model.codebook[indices])


def test_quantizer_is_straight_through_with_legacy_beta():
    vq = VectorQuantizer2(16, 4, beta=0.25)
    z = torch.randn(1, 4, 3, 3, requires_grad=True)
    z_q, loss, (_, _, indices) = vq(z)
    weights = torch.randn_like(z_q)
    (z_q * weights).sum().backward()
    assert torch.equal(z.grad, weights)  # the gradient passes the quantizer unchanged
    codes = vq.embedding.weight[indices].view(1, 3, 3, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(z_q, codes)
    mse = torch.mean((codes - z) ** 2)
    assert loss.item() == pytest.approx((1 + 0.25) * mse.item(), rel=1e-5)  # both terms equal in value
    z.grad = None
    loss.backward()  # legacy: the commitment term (weight 1) is the one that reaches z
    torch.testing.assert_close(z.grad, 2 * (z - codes).detach() / z.numel())


def test_lightning_checkpoint_loads_without_lightning(tmp_path, capsys):
    source = tiny_vqmodel()
    fill_like_fixture(source)
    config = write_yaml(tmp_path / "model.yaml", tiny_config())
    ckpt = write_lightning_ckpt(tmp_path / "last.ckpt", source.state_dict())
    model = load_vqgan(config, ckpt)
    assert "pytorch_lightning" not in sys.modules and "lpips" not in sys.modules
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not hasattr(model, "loss") and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    report = capsys.readouterr().err
    assert "loss.discriminator.* (1)" in report and "loss.perceptual_loss.* (1)" in report
    assert "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint" in report


def test_checkpoint_is_converted_once(tmp_path, monkeypatch):
    source = tiny_vqmodel()
    fill_like_fixture(source)
    ckpt = write_lightning_ckpt(tmp_path / "last.ckpt", source.state_dict())
    first = tiny_vqmodel()
    first.init_from_ckpt(ckpt)
    assert len(list((cache_root() / "converted").glob("*.safetensors"))) == 1
    monkeypatch.setattr(vq_checkpoint, "read_lightning_checkpoint",
                        lambda *a: (_ for _ in ()).throw(AssertionError("unpickled again")))
    second = tiny_vqmodel()
    second.init_from_ckpt(ckpt)  # from the safetensors cache
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key


def test_missing_weight_is_an_error_naming_it(tmp_path):
    state = tiny_vqmodel().state_dict()
    del state["decoder.conv_out.weight"]
    ckpt = write_lightning_ckpt(tmp_path / "last.ckpt", state)
    with pytest.raises(CheckpointError, match=r"last.ckpt: missing 1 weight.*decoder\.conv_out\.weight"):
        tiny_vqmodel().init_from_ckpt(ckpt)
    tiny_vqmodel().init_from_ckpt(ckpt, ignore_keys=["decoder.conv_out"])  # taming's re-init prefixes: on purpose


def test_wrong_config_is_a_shape_error(tmp_path):
    ckpt = write_lightning_ckpt(tmp_path / "last.ckpt", tiny_vqmodel().state_dict())
    wide = VQModel(TINY["ddconfig"], None, 32, TINY["embed_dim"])
    with pytest.raises(CheckpointError, match=r"shape mismatch.*quantize\.embedding\.weight"):
        wide.init_from_ckpt(ckpt)


def test_truncated_or_corrupt_checkpoint_names_the_file(tmp_path):
    ckpt = write_lightning_ckpt(tmp_path / "last.ckpt", tiny_vqmodel().state_dict())
    data = ckpt.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt: truncated or corrupt"):
        tiny_vqmodel().init_from_ckpt(tmp_path / "cut.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="junk.ckpt: truncated or corrupt"):
        tiny_vqmodel().init_from_ckpt(tmp_path / "junk.ckpt")


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    state = {k: v for k, v in tiny_vqmodel().state_dict().items()}
    torch.save({"state_dict": state, "hparams": _RunsCode(str(marker))}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match=r"evil.ckpt: refused to unpickle.*system.*Nothing from it was run"):
        tiny_vqmodel().init_from_ckpt(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_lossconfig_is_never_built_and_del_loss_works():
    model = build_from_config(tiny_config()["model"])
    assert model.loss.config["target"].endswith("VQLPIPSWithDiscriminator")
    assert not list(model.loss.parameters()) and not any(k.startswith("loss.") for k in model.state_dict())
    with pytest.raises(RuntimeError, match="not built by clipag"):
        model.loss(None)
    del model.loss
    assert not hasattr(model, "loss")


def test_gumbel_config_loads(tmp_path):
    config = tiny_config("taming.models.vqgan.GumbelVQ")
    source = build_from_config(config["model"])
    ckpt = write_lightning_ckpt(tmp_path / "last.ckpt", source.state_dict())
    model = load_vqgan(write_yaml(tmp_path / "gumbel.yaml", config), ckpt)
    assert isinstance(model, GumbelVQ) and model.quantize.n_embed == TINY["n_embed"]
    assert torch.equal(model.codebook, source.quantize.embed.weight)


def test_net2net_transformer_checkpoint_gives_its_first_stage(tmp_path, capsys):
    first = tiny_config()["model"]
    first["params"]["ckpt_path"] = "logs/2020-11-09T13-33-36_faceshq_vqgan/checkpoints/last.ckpt"
    config = {"model": {"target": "taming.models.cond_transformer.Net2NetTransformer", "params": {
        "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT", "params": {"n_layer": 24}},
        "first_stage_config": first, "cond_stage_config": "__is_unconditional__"}}}
    source = tiny_vqmodel()
    fill_like_fixture(source)
    ckpt = write_lightning_ckpt(tmp_path / "last.ckpt", source.state_dict(), prefix="first_stage_model.",
                                extra_tensors={"transformer.tok_emb.weight": torch.randn(4, 4)})
    with pytest.warns(UserWarning, match="does not exist"):
        model = load_vqgan(write_yaml(tmp_path / "net2net.yaml", config), ckpt)
    assert isinstance(model, VQModel)
    assert torch.equal(model.decoder.conv_out.weight, source.decoder.conv_out.weight)
    assert "transformer.* (1)" in capsys.readouterr().err


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown VQGAN model type 'taming.models.vqgan.EMAVQ'.*GumbelVQ"):
        build_from_config({"target": "taming.models.vqgan.EMAVQ", "params": {}})
