"""Batch-wide CIFAR augmentation (pf_envs.data.crop_flip) and device-resident splits."""

from __future__ import annotations

import pytest
import torch

from pf_envs.data import TensorSplit, crop_flip

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _per_image_reference(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The augmentation as it was written before (one crop and flip per image, in a loop)."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    offsets = torch.randint(0, 9, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(images)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        crop = padded[i, :, dy : dy + h, dx : dx + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


def _split(n: int = 64, seed: int = 0) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return TensorSplit("t", images, torch.randint(0, 10, (n,), generator=g), (0.5,) * 3, (0.25,) * 3)


def test_same_seed_draws_what_the_per_image_loop_drew():
    split = _split()
    for seed in range(3):
        ref = _per_image_reference(split.images, torch.Generator().manual_seed(seed))
        assert torch.equal(split.augment(split.images, torch.Generator().manual_seed(seed)), ref)


def test_same_seed_same_batches_other_seed_other_batches():
    split = _split(100)

    def first(seed: int) -> torch.Tensor:
        return next(split.batches(32, shuffle=True, augment=True, generator=torch.Generator().manual_seed(seed)))[0]

    assert torch.equal(first(7), first(7))
    assert not torch.equal(first(7), first(8))


def _coordinate_images(n: int) -> torch.Tensor:
    """Channel 0 holds row + 1, channel 1 column + 1 (0 is the padding)."""
    ar = torch.arange(1, 33, dtype=torch.uint8)
    img = torch.stack([ar[:, None].expand(32, 32), ar[None, :].expand(32, 32), torch.ones(32, 32, dtype=torch.uint8)])
    return img.expand(n, 3, 32, 32).contiguous()


def _decode(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row offset, column offset, flipped) of each augmented coordinate image."""
    centre_row = out[:, 0, 16, 16].long()
    flipped = out[:, 1, 16, 17].long() < out[:, 1, 16, 16].long()
    dy = centre_row - 13  # output row 16 = padded row dy + 16 = image row dy + 12, value dy + 13
    dx = out[:, 1, 16, 16].long() - torch.where(flipped, 12, 13)
    return dy, dx, flipped


def test_offsets_and_flips_have_the_old_distribution():
    """Per image: row and column offsets uniform on 0..8, independent; a flip with p = 1/2."""
    n = 9000
    images = _coordinate_images(n)
    out = TensorSplit("c", images, torch.zeros(n, dtype=torch.long), (0.5,) * 3, (0.25,) * 3).augment(
        images, torch.Generator().manual_seed(0))
    dy, dx, flipped = _decode(out)
    ref_dy, ref_dx, ref_flipped = _decode(_per_image_reference(images, torch.Generator().manual_seed(0)))
    assert torch.equal(dy, ref_dy) and torch.equal(dx, ref_dx) and torch.equal(flipped, ref_flipped)
    assert dy.min() == 0 and dy.max() == 8 and dx.min() == 0 and dx.max() == 8
    sigma = (n * (1 / 9) * (8 / 9)) ** 0.5
    for counts in (torch.bincount(dy, minlength=9), torch.bincount(dx, minlength=9)):
        assert ((counts - n / 9).abs() < 5 * sigma).all(), counts
    assert abs(flipped.float().mean().item() - 0.5) < 5 * (0.25 / n) ** 0.5
    assert abs(torch.corrcoef(torch.stack([dy.float(), dx.float()]))[0, 1].item()) < 0.05


def test_crop_flip_keeps_the_image_inside_the_crop():
    images = _coordinate_images(2)
    out = crop_flip(images, torch.tensor([[4, 4], [4, 4]]), torch.tensor([False, True]))
    assert torch.equal(out[0], images[0]) and torch.equal(out[1], images[1].flip(-1))
    edge = crop_flip(images, torch.tensor([[0, 8], [8, 0]]), torch.tensor([False, False]))
    assert (edge[0, :, :4, :] == 0).all() and (edge[0, :, :, -4:] == 0).all()  # padding shows at the far edges
    assert (edge[1, :, -4:, :] == 0).all() and (edge[1, :, :, :4] == 0).all()


def test_to_the_same_device_is_the_split_itself():
    split = _split()
    assert split.to("cpu") is split and split.device == torch.device("cpu")
    with pytest.raises(ValueError, match="one device"):
        TensorSplit("x", split.images, split.labels.to("meta"), (0.5,) * 3, (0.25,) * 3)


@needs_cuda
def test_batches_on_cuda_equal_the_cpu_ones():
    split = _split(100)
    on_gpu = split.to("cuda")
    assert on_gpu is split.to("cuda") and on_gpu.images.is_cuda
    cpu = list(split.batches(32, shuffle=True, augment=True, generator=torch.Generator().manual_seed(3)))
    gpu = list(on_gpu.batches(32, shuffle=True, augment=True, generator=torch.Generator().manual_seed(3)))
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert xg.is_cuda and torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu())
