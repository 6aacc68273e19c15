"""Quantizers: the VQ loss formula (beta on the encoder term), the EMA update, data initialisation,
dead-code restarts (also across 2 gloo processes), FSQ's grid and indices, fp32 under autocast."""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from argen.nn.quantize import FSQ, VectorQuantizer, perplexity, straight_through, vq_loss


# ----- the loss formula ---------------------------------------------------------------------------
def test_beta_multiplies_the_commitment_term():
    torch.manual_seed(0)
    beta = 0.3  # != 1, so swapping the terms (taming's legacy) changes both gradients
    z = torch.randn(5, 4, requires_grad=True)
    e = torch.randn(5, 4, requires_grad=True)
    terms = vq_loss(z, e, beta, learned_codebook=True)
    terms.total.backward()
    n = z.numel()
    torch.testing.assert_close(z.grad, 2 * beta * (z - e).detach() / n)
    torch.testing.assert_close(e.grad, 2 * (e - z).detach() / n)  # the codebook term has weight 1
    torch.testing.assert_close(terms.commitment, ((z - e) ** 2).mean())
    torch.testing.assert_close(terms.total, terms.codebook + beta * terms.commitment)


def test_ema_mode_has_no_codebook_term():
    torch.manual_seed(0)
    beta = 0.25
    z = torch.randn(6, 3, requires_grad=True)
    e = torch.randn(6, 3, requires_grad=True)
    terms = vq_loss(z, e, beta, learned_codebook=False)
    assert float(terms.codebook) == 0.0
    terms.total.backward()
    assert e.grad is None or bool((e.grad == 0).all())
    torch.testing.assert_close(z.grad, 2 * beta * (z - e).detach() / z.numel())


def test_straight_through_value_and_gradient():
    z = torch.randn(3, 2, requires_grad=True)
    q = torch.randn(3, 2)
    out = straight_through(z, q)
    torch.testing.assert_close(out, q)
    out.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))


def test_quantizer_loss_gradient_reaches_the_encoder_with_beta():
    torch.manual_seed(1)
    vq = VectorQuantizer(8, 3, beta=0.4).train()
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    out = vq(z)
    out.loss.backward()
    e = vq.indices_to_latent(out.indices)
    torch.testing.assert_close(z.grad, 2 * 0.4 * (z - e).detach() / z.numel())


def test_perplexity():
    assert math.isclose(float(perplexity(torch.ones(7))), 7.0, rel_tol=1e-5)
    assert math.isclose(float(perplexity(torch.tensor([5.0, 0, 0]))), 1.0, rel_tol=1e-5)


# ----- EMA codebook -------------------------------------------------------------------------------
def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact pairwise distances (torch.cdist's matrix-product shortcut is off by ~1e-3)."""
    return (a[:, None, :] - b[None, :, :]).norm(dim=-1)


def _initialised(k: int, d: int, **kw) -> VectorQuantizer:
    vq = VectorQuantizer(k, d, **kw)
    vq.initialized.fill_(True)
    return vq


def test_ema_update_equals_the_formula_on_a_hand_example():
    decay, eps = 0.9, 1e-5
    vq = _initialised(3, 2, decay=decay, eps=eps, restart_threshold=0.0)
    vq.ema_count.copy_(torch.tensor([2.0, 1.0, 4.0]))
    vq.ema_sum.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0], [4.0, 4.0]]))
    counts = torch.tensor([3.0, 0.0, 1.0])
    sums = torch.tensor([[6.0, 3.0], [0.0, 0.0], [1.0, -1.0]])
    vq.update_statistics({"vq_counts": (counts, torch.ones(3)), "vq_sums": (sums, torch.ones(3, 2)),
                          "rec_mse": (torch.tensor(1.0), torch.tensor(1.0))})  # a foreign name is ignored
    count = torch.tensor([0.9 * 2 + 0.1 * 3, 0.9 * 1, 0.9 * 4 + 0.1 * 1])
    ssum = torch.tensor([[0.9 * 2 + 0.6, 0.3], [0.0, 0.9], [0.9 * 4 + 0.1, 0.9 * 4 - 0.1]])
    n = count.sum()
    smoothed = (count + eps) / (n + 3 * eps) * n
    torch.testing.assert_close(vq.ema_count, count)
    torch.testing.assert_close(vq.ema_sum, ssum)
    torch.testing.assert_close(vq.embed, ssum / smoothed[:, None])


def test_forward_in_training_mode_leaves_the_codebook_alone():
    torch.manual_seed(0)
    vq = _initialised(4, 2).train()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    z = torch.randn(3, 2, 4, 4)
    out = vq(z)
    for k, v in vq.state_dict().items():
        assert torch.equal(v, before[k]), k
    counts, sums = out.stats["vq_counts"][0], out.stats["vq_sums"][0]
    assert counts.shape == (4,) and sums.shape == (4, 2) and int(counts.sum()) == 3 * 16
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    idx = out.indices.reshape(-1)
    for k in range(4):  # sums are the encoder outputs assigned to each code
        torch.testing.assert_close(sums[k], flat[idx == k].sum(0))
    assert out.stats["vq_counts"][1].shape == counts.shape and out.stats["vq_sums"][1].shape == sums.shape


def test_eval_mode_returns_no_statistics():
    vq = VectorQuantizer(4, 2).eval()
    assert vq(torch.randn(1, 2, 3, 3)).stats == {}


def test_data_initialisation_from_the_first_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3).train()
    assert not bool(vq.initialized)
    z = torch.randn(2, 3, 4, 4)  # 32 vectors >= 8 codes: codes are 8 distinct encoder outputs
    out = vq(z)
    vq.update_statistics(out.stats)
    assert bool(vq.initialized)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    dist = _dist(vq.embed, flat)
    assert bool((dist.min(1).values < 1e-6).all())
    assert len({int(i) for i in dist.argmin(1)}) == 8


def test_data_initialisation_tiles_with_noise_when_too_few_vectors():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4).train()
    z = torch.randn(1, 4, 1, 3)  # 3 vectors for 16 codes
    vq.update_statistics(vq(z).stats)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    nearest = _dist(vq.embed, flat).min(1).values
    assert bool((nearest < 0.05).all())  # each code is an encoder output plus noise of std 0.01/sqrt(D)
    assert torch.unique(vq.embed, dim=0).shape[0] == 16  # the noise makes them distinct


def test_dead_code_is_restarted_from_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, restart_threshold=1.0, decay=0.9).train()
    z = torch.randn(2, 2, 4, 4)
    vq.update_statistics(vq(z).stats)  # data init: counts 1 each
    vq.embed[0] = torch.tensor([1e3, 1e3])  # code 0 is never chosen now
    vq.ema_sum[0] = vq.embed[0]
    restarted = 0
    for _ in range(3):
        z = torch.randn(2, 2, 4, 4)
        out = vq(z)
        used0 = bool((out.indices == 0).any())
        vq.update_statistics(out.stats)
        restarted += vq.last_restarted
        if not used0 and vq.last_restarted:
            break
    assert restarted >= 1
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    assert float(_dist(vq.embed[:1], flat).min()) < 1e-5  # now one of the step's encoder outputs
    assert float(vq.ema_count[0]) == pytest.approx(1.0)


def test_no_restarts_with_threshold_zero():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, restart_threshold=0.0).train()
    vq.update_statistics(vq(torch.randn(2, 2, 4, 4)).stats)
    vq.embed[0] = torch.tensor([1e3, 1e3])
    vq.ema_sum[0] = vq.embed[0]
    for _ in range(3):
        vq.update_statistics(vq(torch.randn(2, 2, 4, 4)).stats)
        assert vq.last_restarted == 0
    assert float(vq.embed[0, 0]) > 100


def test_l2_normalised_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3, l2_normalize=True).train()
    z = torch.randn(2, 3, 4, 4) * 5
    out = vq(z)
    vq.update_statistics(out.stats)
    torch.testing.assert_close(vq.embed.norm(dim=1), torch.ones(8))
    torch.testing.assert_close(out.z_q.norm(dim=1), torch.ones(2, 4, 4))


def test_gradient_trained_codebook():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema=False).train()
    assert isinstance(vq.embed, torch.nn.Parameter)
    out = vq(torch.randn(2, 2, 3, 3))
    out.loss.backward()
    assert vq.embed.grad is not None and float(vq.embed.grad.abs().sum()) > 0


def test_window_usage_counts_recent_training_assignments():
    vq = VectorQuantizer(10, 2, usage_window=6)
    assert math.isnan(vq.window_usage())
    vq.eval()
    vq(torch.randn(1, 2, 4, 4))
    assert math.isnan(vq.window_usage())  # eval passes are not recorded
    vq.train()
    vq.embed.copy_(torch.arange(20.0).view(10, 2) * 10)
    pts = vq.embed[[1, 1, 2, 3]].t().reshape(1, 2, 1, 4)
    vq(pts)
    assert vq.window_usage() == pytest.approx(3 / 10)
    vq(vq.embed[[5, 5, 5, 5]].t().reshape(1, 2, 1, 4))  # overwrites the oldest two of six
    assert vq.window_usage() == pytest.approx(3 / 10)  # {2, 3, 5}


# ----- FSQ -----------------------------------------------------------------------------------------
def test_fsq_level_and_basis_facts():
    q = FSQ((8, 6, 5))
    assert q.codebook_size == 240 and q.dim == 3 and q.basis == (1, 8, 48)


@pytest.mark.parametrize("levels", [(8, 6, 5), (2, 3), (7,), (8, 5, 5, 5)])
def test_fsq_index_round_trip_over_every_code(levels):
    q = FSQ(levels)
    idx = torch.arange(q.codebook_size)
    codes = q.indices_to_codes(idx)
    assert codes.shape == (q.codebook_size, len(levels))
    assert bool((codes >= -1).all() and (codes <= 1).all())
    assert torch.equal(q.codes_to_indices(codes), idx)
    assert torch.unique(codes, dim=0).shape[0] == q.codebook_size


@pytest.mark.parametrize("levels", [(8, 6, 5), (4, 3)])
def test_fsq_quantize_hits_every_level_and_stays_on_the_grid(levels):
    q = FSQ(levels)
    z = torch.linspace(-6, 6, 2001)[:, None].expand(-1, len(levels))
    codes = q.quantize(z)
    for i, lv in enumerate(levels):
        values = torch.unique(codes[:, i])
        assert values.numel() == lv  # the even-level offset gives L values, not L + 1
        torch.testing.assert_close(values * (lv // 2), torch.arange(lv).float() - lv // 2)
    idx = q.codes_to_indices(codes)
    assert int(idx.min()) >= 0 and int(idx.max()) < q.codebook_size
    torch.testing.assert_close(q.indices_to_codes(idx), codes)


def test_fsq_straight_through_and_no_loss():
    q = FSQ((8, 6, 5)).train()
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = q(z)
    assert out.stats == {} and float(out.loss) == 0.0
    assert out.indices.shape == (2, 4, 4)
    torch.testing.assert_close(q.indices_to_latent(out.indices), out.z_q.detach())
    out.z_q.sum().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0


# ----- fp32 under autocast -----------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: VectorQuantizer(16, 4), lambda: FSQ((4, 4))], ids=["vq", "fsq"])
def test_quantizers_run_in_fp32_under_autocast(make):
    torch.manual_seed(0)
    q = make().train()
    z = torch.randn(2, 4 if isinstance(q, VectorQuantizer) else 2, 3, 3)
    ref = q(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z.bfloat16())
        idx = q.encode(z.bfloat16())
    assert out.z_q.dtype == torch.float32 and out.loss.dtype == torch.float32
    for t in out.stats.values():
        assert t[0].dtype == torch.float32
    # the same codes as fp32 on bf16-rounded inputs: nothing inside ran in bfloat16
    ref16 = q(z.bfloat16().float())
    assert torch.equal(out.indices, ref16.indices) and torch.equal(idx, ref16.indices)
    torch.testing.assert_close(out.z_q, ref16.z_q)
    assert ref.z_q.dtype == torch.float32


# ----- restarts across ranks ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        vq = VectorQuantizer(8, 2, decay=0.5).train()  # the same random init on both ranks
        torch.manual_seed(100 + rank)  # different data and different draws on each rank
        for _ in range(4):
            out = vq(torch.randn(1, 2, 2, 3) + 3 * rank)  # 6 vectors < 8 codes: tiling; ranks' data differ
            stats = out.stats
            for s, c in stats.values():  # what the trainer does: sum over ranks
                dist.all_reduce(s)
                dist.all_reduce(c)
            vq.update_statistics(stats)
        torch.save({"state": vq.state_dict(), "restarted": vq.last_restarted}, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_initialisation_and_restarts_are_identical_on_two_ranks(tmp_path):
    world = 2
    mp.start_processes(_ddp_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True,
                       start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt") for r in range(world))
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert bool(r0["state"]["initialized"])
