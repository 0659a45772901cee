"""The low-memory variant's reused weight buffer: stacked views, aligned, never handed out twice while in use."""

from __future__ import annotations

import torch

from edgediff.variants.torch_lowmem import WeightArena


def test_nested_layers_stack_and_release():
    arena = WeightArena()
    _, first = arena.take([torch.Size([256])], [torch.float32])  # the largest layer sizes the buffer
    arena.give_back(first)
    (a, b), taken = arena.take([torch.Size([4, 3]), torch.Size([5])], [torch.float32, torch.bfloat16])
    assert a.shape == (4, 3) and a.dtype == torch.float32 and b.shape == (5,) and b.dtype == torch.bfloat16
    assert a.data_ptr() % 64 == 0 and b.data_ptr() % 64 == 0  # aligned as a fresh allocation would be
    a.fill_(1.0)
    (c,), inner = arena.take([torch.Size([7])], [torch.float32])  # a layer inside the first: above it, not over it
    c.fill_(2.0)
    assert torch.all(a == 1.0) and c.data_ptr() >= b.data_ptr() + 5 * 2 and inner > 0
    arena.give_back(inner)
    arena.give_back(taken)
    (again,), _ = arena.take([torch.Size([4, 3])], [torch.float32])
    assert again.data_ptr() == a.data_ptr()  # reused: no new allocation per layer


def test_a_layer_too_big_above_others_gets_its_own_memory():
    arena = WeightArena()
    (small,), taken = arena.take([torch.Size([16])], [torch.float32])
    (big,), zero = arena.take([torch.Size([1000])], [torch.float32])
    assert zero == 0 and big.numel() == 1000
    big.fill_(3.0)
    small.fill_(1.0)
    assert torch.all(big == 3.0)  # separate memory
    arena.give_back(zero)
    arena.give_back(taken)
    (grown,), _ = arena.take([torch.Size([1000])], [torch.float32])  # nothing in use: the buffer grows
    assert grown.numel() == 1000
    arena.reset()
