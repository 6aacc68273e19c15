"""Gated PixelCNN and PixelCNN++: receptive fields, shifted-conv semantics, dropout, sizes.

Receptive fields are measured with gradients: feed the image as a float tensor that requires
grad (the models scale it with `scale_input`, which is differentiable) and see which input
pixels the output at one position depends on.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import argen
from argen.nn.gated import GatedStackLayer, HorizontalMaskedConv2d
from argen.nn.shifted import (
    DownRightShiftedConv2d,
    DownRightShiftedConvTranspose2d,
    DownShiftedConv2d,
    DownShiftedConvTranspose2d,
    GatedResidualBlock,
    down_shift,
    right_shift,
)
from argen.registry import tiny_kwargs


def _field(model, shape, pos, batch: int = 4) -> torch.Tensor:
    """(H, W) bool: input pixels (any channel) the parameters at `pos` depend on."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, model.levels, (batch, *shape), generator=g).float().requires_grad_(True)
    model(x)[:, :, pos[0], pos[1]].sum().backward()
    return x.grad.abs().sum((0, 1)) > 0


def _before(h: int, w: int, pos) -> torch.Tensor:
    """(H, W) bool: pixels strictly before `pos` in raster order."""
    idx = torch.arange(h * w).view(h, w)
    return idx < pos[0] * w + pos[1]


def _reads(layer: nn.Module, in_shape) -> torch.Tensor:
    """(H_out, W_out, H_in, W_in) bool: which input positions each output position of a
    single-channel layer reads (all-ones weights, zero bias, one unit impulse per input pixel)."""
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.zero_()
        h, w = in_shape
        impulses = torch.eye(h * w).view(h * w, 1, h, w)
        out = layer(impulses)[:, 0]  # (H_in * W_in, H_out, W_out)
    return (out != 0).permute(1, 2, 0).reshape(*out.shape[1:], h, w)


def _support(reads: torch.Tensor, out_pos) -> set[tuple[int, int]]:
    return {tuple(ix) for ix in reads[out_pos].nonzero().tolist()}


# ----- shared blocks ------------------------------------------------------------------------------


def test_shifts_move_maps_and_fill_zeros():
    x = torch.arange(1.0, 7.0).view(1, 1, 2, 3)
    assert down_shift(x).tolist() == [[[[0, 0, 0], [1, 2, 3]]]]
    assert right_shift(x).tolist() == [[[[0, 1, 2], [0, 4, 5]]]]


@pytest.mark.parametrize("stride", [1, 2])
def test_shifted_conv_fields_match_documentation(stride):
    h = w = 8
    ho = (h + stride - 1) // stride
    reads_d = _reads(DownShiftedConv2d(1, 1, (2, 3), stride=stride), (h, w))
    reads_dr = _reads(DownRightShiftedConv2d(1, 1, (2, 2), stride=stride), (h, w))
    assert reads_d.shape[:2] == reads_dr.shape[:2] == (ho, ho)
    for i in range(ho):
        for j in range(ho):
            rows = range(stride * i - 1, stride * i + 1)
            want = {(r, c) for r in rows for c in range(stride * j - 1, stride * j + 2) if 0 <= r < h and 0 <= c < w}
            assert _support(reads_d, (i, j)) == want
            want = {(r, c) for r in rows for c in range(stride * j - 1, stride * j + 1) if 0 <= r < h and 0 <= c < w}
            assert _support(reads_dr, (i, j)) == want


def test_transposed_shifted_convs_upsample_causally():
    """Fine (r, c) reads coarse row r // 2 only (kernel height 2, stride 2); the down-right one
    also only coarse column c // 2, the down one columns around c / 2."""
    reads_d = _reads(DownShiftedConvTranspose2d(1, 1), (3, 4))
    reads_dr = _reads(DownRightShiftedConvTranspose2d(1, 1), (3, 4))
    assert reads_d.shape[:2] == reads_dr.shape[:2] == (6, 8)
    for r in range(6):
        for c in range(8):
            assert _support(reads_dr, (r, c)) == {(r // 2, c // 2)}
            got = _support(reads_d, (r, c))
            assert {row for row, _ in got} == {r // 2}
            assert {col for _, col in got} == ({c // 2} if c % 2 == 0 else {c // 2, c // 2 + 1} & set(range(4)))


def test_gated_residual_block_aux_and_shapes():
    block = GatedResidualBlock(4, DownRightShiftedConv2d, aux_channels=3, num_classes=2, dropout=0.0)
    x, aux = torch.randn(2, 4, 5, 6), torch.randn(2, 3, 5, 6)
    out = block(x, aux, cond=torch.tensor([0, 1]))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="aux"):
        block(x)
    with pytest.raises(ValueError, match="aux"):
        GatedResidualBlock(4, DownShiftedConv2d)(x, aux)
    with pytest.raises(ValueError, match="dropout"):
        GatedResidualBlock(4, DownShiftedConv2d, dropout=1.0)
    with torch.no_grad():  # with the gate's value half at zero the block is the identity
        block.conv_out.weight.zero_()
        block.conv_out.bias.zero_()
    torch.testing.assert_close(block(x, aux), x)


def test_horizontal_mask_keeps_groups_in_both_gate_halves():
    """Feature f (tanh half) and f + h (sigmoid half) must see the same current-pixel inputs."""
    conv = HorizontalMaskedConv2d(6, 12, 3, "B", groups=3, halves=2)
    centre = conv.mask[:, :, 0, -1]  # (12, 6) current-pixel taps
    torch.testing.assert_close(centre[:6], centre[6:])
    group_out, group_in = torch.arange(6) // 2, torch.arange(6) // 2
    torch.testing.assert_close(centre[:6], (group_in[None, :] <= group_out[:, None]).float())
    assert bool((conv.mask[:, :, 0, :-1] == 1).all()), "pixels to the left are fully connected"


def test_gated_layer_vertical_never_sees_horizontal_and_link_skips_current_row():
    layer = GatedStackLayer(6, 6, 3, "B", groups=3, skip_channels=6)
    v = torch.randn(1, 6, 5, 5, requires_grad=True)
    h = torch.randn(1, 6, 5, 5, requires_grad=True)
    v_out, h_out, skip = layer(v, h)
    grad_h = torch.autograd.grad(v_out.sum(), h, allow_unused=True)[0]
    assert grad_h is None or bool((grad_h == 0).all()), "horizontal stack leaked into the vertical one"
    # the horizontal stack at row 2 reads the vertical stack at rows < 2 only
    grad_v = torch.autograd.grad(h_out[:, :, 2].sum() + skip[:, :, 2].sum(), v)[0]
    assert bool((grad_v[:, :, 2:] == 0).all()) and bool((grad_v[:, :, :2] != 0).any())


# ----- Gated PixelCNN ------------------------------------------------------------------------------


def test_gated_pixelcnn_has_no_blind_spot():
    """Every pixel before (4, 3) is reached, nothing at or after it; plain PixelCNN of the same
    depth misses pixels above-right that the gated model reaches."""
    shape, pos = (1, 7, 7), (4, 3)
    gated = argen.create_model("gated_pixelcnn", image_shape=shape, levels=4, hidden=12, n_layers=4, kernel=3, head=12)
    plain = argen.create_model("pixelcnn", image_shape=shape, levels=4, hidden=12, n_blocks=4, head=12, first_kernel=3)
    before = _before(7, 7, pos)
    seen_gated, seen_plain = _field(gated.eval(), shape, pos), _field(plain.eval(), shape, pos)
    assert torch.equal(seen_gated, before)
    blind = before & ~seen_plain
    assert bool(blind[pos[0] - 1, pos[1] + 2]) and bool(blind[pos[0] - 1, pos[1] + 3]), "PixelCNN blind spot expected"
    assert not bool((seen_plain & ~before).any())


def test_gated_pixelcnn_channel_order_at_current_pixel():
    """Channel c's logits at a pixel depend on that pixel's channels < c only (gradient check)."""
    model = argen.create_model("gated_pixelcnn", image_shape=(3, 4, 4), levels=4, **tiny_kwargs("gated_pixelcnn")).eval()
    x = torch.randint(0, 4, (2, 3, 4, 4)).float().requires_grad_(True)
    params = model(x)[:, :, 2, 1].view(2, 3, 4)  # (B, C, L)
    for c in range(3):
        grad = torch.autograd.grad(params[:, c].sum(), x, retain_graph=True)[0][:, :, 2, 1].abs().sum(0)
        assert bool((grad[c:] == 0).all()), f"channel {c} saw channels >= {c} of its own pixel"
        assert bool((grad[:c] > 0).all()), f"channel {c} does not see the earlier channels of its pixel"


def test_gated_pixelcnn_without_skips_and_bad_config():
    model = argen.create_model("gated_pixelcnn", image_shape=(1, 5, 6), levels=2, hidden=6, n_layers=2, kernel=3, head=6,
                               skip=False)
    x = torch.randint(0, 2, (2, 1, 5, 6))
    assert model.log_prob(x).shape == (2,)
    with pytest.raises(ValueError, match="multiples of 3.*given hidden=8"):
        argen.create_model("gated_pixelcnn", image_shape=(3, 4, 4), levels=4, hidden=8, head=6)
    with pytest.raises(ValueError, match="kernel must be odd.*given 4"):
        argen.create_model("gated_pixelcnn", image_shape=(1, 4, 4), levels=4, kernel=4)


# ----- PixelCNN++ ------------------------------------------------------------------------------------


def test_pixelcnn_pp_receptive_field():
    """Output at (4, 4) reads no pixel at or after it, and reads up-left, above, above-right,
    left, and far above-right (through the downsampled stages)."""
    model = argen.create_model("pixelcnn_pp", image_shape=(1, 8, 8), levels=4, **tiny_kwargs("pixelcnn_pp")).eval()
    pos = (4, 4)
    seen = _field(model, (1, 8, 8), pos)
    assert not bool((seen & ~_before(8, 8, pos)).any()), "PixelCNN++ reads a pixel at or after the current one"
    for r, c in [(3, 3), (3, 4), (3, 5), (4, 3), (0, 7), (3, 7), (0, 0)]:
        assert bool(seen[r, c]), f"pixel {(r, c)} should be in the receptive field of {pos}"


def test_pixelcnn_pp_sizes():
    with pytest.raises(ValueError, match=r"divisible by 4.*given 5x6"):
        argen.create_model("pixelcnn_pp", image_shape=(1, 5, 6), levels=4)
    with pytest.raises(ValueError, match=r"divisible by 4.*given 28x30"):
        argen.create_model("pixelcnn_pp", image_shape=(1, 28, 30), levels=4)
    model = argen.create_model("pixelcnn_pp", image_shape=(1, 28, 28), levels=256, **tiny_kwargs("pixelcnn_pp")).eval()
    x = torch.randint(0, 256, (2, 1, 28, 28))
    assert model(x).shape == (2, model.distribution.num_params, 28, 28)
    lp = model.log_prob(x)
    assert lp.shape == (2,) and bool(torch.isfinite(lp).all())


def test_pixelcnn_pp_dropout_train_vs_eval():
    model = argen.create_model("pixelcnn_pp", image_shape=(1, 8, 8), levels=4, filters=8, blocks_per_stage=1,
                               components=2, dropout=0.5)
    x = torch.randint(0, 4, (2, 1, 8, 8))
    model.eval()
    torch.testing.assert_close(model.log_prob(x), model.log_prob(x), atol=0, rtol=0)
    model.train()
    assert not torch.allclose(model.log_prob(x), model.log_prob(x)), "dropout should make training passes differ"
    with pytest.raises(ValueError, match="dropout"):
        argen.create_model("pixelcnn_pp", image_shape=(1, 8, 8), levels=4, dropout=1.0)


# ----- both: level and channel range ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["gated_pixelcnn", "pixelcnn_pp"])
@pytest.mark.parametrize("channels,levels", [(1, 2), (3, 256)])
def test_levels_and_channels(name, channels, levels):
    model = argen.create_model(name, image_shape=(channels, 4, 4), levels=levels, **tiny_kwargs(name)).eval()
    x = torch.randint(0, levels, (2, channels, 4, 4))
    lp = model.log_prob(x)
    assert lp.shape == (2,) and bool(torch.isfinite(lp).all()) and bool((lp < 0).all())
    s = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert s.shape == (2, channels, 4, 4) and int(s.min()) >= 0 and int(s.max()) < levels
    with pytest.raises(ValueError, match="levels"):
        argen.create_model(name, image_shape=(channels, 4, 4), levels=65537, **tiny_kwargs(name))
