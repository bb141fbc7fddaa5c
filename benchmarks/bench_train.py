"""One pix2pix training step (D then G update, GAN + 100 L1) on the CPU, batch 1 at 256x256, per generator width.

    python -m pytest benchmarks/bench_train.py
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("ngf", [16, 32, 64])
@pytest.mark.benchmark(group="training step, batch 1, 256x256, CPU")
def test_training_step(benchmark, record, ngf: int) -> None:
    import torch
    import torch.nn.functional as F

    from dexrt_train.losses import gan_loss
    from dexrt_train.networks import DiscriminatorConfig, GeneratorConfig, define_D, define_G

    torch.manual_seed(0)
    G, D = define_G(GeneratorConfig(ngf=ngf)), define_D(DiscriminatorConfig())
    opt_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    se = torch.rand(1, 1, 256, 256) * 2 - 1
    de = torch.rand(1, 2, 256, 256) * 2 - 1

    def step() -> float:
        fake = G(se)
        opt_D.zero_grad(set_to_none=True)
        loss_D = 0.5 * (gan_loss(D(torch.cat([se, de], 1)), True, "vanilla")
                        + gan_loss(D(torch.cat([se, fake.detach()], 1)), False, "vanilla"))
        loss_D.backward()
        opt_D.step()
        opt_G.zero_grad(set_to_none=True)
        loss_G = gan_loss(D(torch.cat([se, fake], 1)), True, "vanilla") + 100 * F.l1_loss(fake, de)
        loss_G.backward()
        opt_G.step()
        return float(loss_G)

    before = next(G.parameters()).detach().clone()
    losses = benchmark.pedantic(lambda: [step() for _ in range(1)], rounds=3, warmup_rounds=1)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, next(G.parameters()).detach())  # the step trained
    record(f"ngf {ngf}")
