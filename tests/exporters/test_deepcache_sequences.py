"""``DeepCacheSequences``: the per-image DeepCache state of a stateful ``unet-deepcache`` Triton model (no server)."""

import numpy as np
import pytest
import torch

from edgediff.errors import InvalidArgumentError
from edgediff.variants.deepcache import DeepCacheUNet
from exporters.part_runtime import DeepCacheSequences, PartSpec
from exporters.targets import DEEPCACHE_PART


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_unet(calls: list[str]) -> DeepCacheUNet:
    """Full returns the timestep as noise and caches it; shallow returns the cached feature: outputs show the cache."""

    def full(sample, timestep):
        calls.append("full")
        feature = torch.full_like(sample, float(timestep[0]))
        return feature.clone(), feature

    def shallow(sample, timestep, feature):
        calls.append("shallow")
        return feature.clone()

    return DeepCacheUNet(full, shallow, 3)


def step(sequences, sequence_id, t, *, start=False):
    sample = np.zeros((1, 3, 2, 2), dtype=np.float32)
    return float(sequences.step(sequence_id, sample, np.array([[t]], dtype=np.int64), start=start).max())


def test_each_image_has_its_own_cache_and_interval():
    calls: list[str] = []
    sequences = DeepCacheSequences(fake_unet(calls), idle_s=60, clock=Clock())
    assert step(sequences, 1, 900, start=True) == 900
    assert step(sequences, 2, 500, start=True) == 500  # a second image, interleaved
    assert step(sequences, 1, 800) == 900 and step(sequences, 2, 400) == 500  # each its own cached feature
    assert step(sequences, 1, 700) == 900
    assert step(sequences, 1, 600) == 600  # image 1's step 3: full again (interval 3)
    assert calls == ["full", "full", "shallow", "shallow", "shallow", "full"]
    assert len(sequences) == 2
    assert sequences.end(1) and not sequences.end(1)
    assert len(sequences) == 1


def test_a_restarted_image_starts_with_a_full_step():
    calls: list[str] = []
    sequences = DeepCacheSequences(fake_unet(calls), idle_s=60, clock=Clock())
    step(sequences, 5, 900, start=True)
    step(sequences, 5, 800)
    assert step(sequences, 5, 100, start=True) == 100  # START again: a fresh state, whatever was cached
    assert calls == ["full", "shallow", "full"]


def test_a_step_of_an_image_never_started_or_dropped_names_the_start_flag():
    clock = Clock()
    sequences = DeepCacheSequences(fake_unet([]), idle_s=10, clock=clock)
    with pytest.raises(InvalidArgumentError, match="START flag"):
        step(sequences, 9, 900)
    step(sequences, 9, 900, start=True)
    step(sequences, 8, 900, start=True)
    clock.now = 5.0
    step(sequences, 8, 800)  # image 8 stays fresh
    clock.now = 12.0  # image 9 idle for 12 s > 10 s: dropped on the next request
    step(sequences, 8, 700)
    assert len(sequences) == 1
    with pytest.raises(InvalidArgumentError, match="idle over 10 s"):
        step(sequences, 9, 800)


def test_deepcache_spec_round_trips_through_parameters():
    spec = PartSpec(variant="openvino-bf16-dc3", part=DEEPCACHE_PART, preset="tiny",
                    artifact="1/unet-full/model.xml", shallow_artifact="1/unet-shallow/model.xml",
                    deepcache_interval=3)
    assert PartSpec.from_parameters(spec.to_parameters()) == spec
    plain = PartSpec(variant="onnx-fp32", part="unet", preset="tiny", artifact="1/model.onnx")
    assert set(plain.to_parameters()) == {"variant", "part", "preset", "artifact", "threads"}
    broken = {k: v for k, v in spec.to_parameters().items() if k != "shallow_artifact"}
    with pytest.raises(Exception, match="shallow_artifact"):
        PartSpec.from_parameters(broken)
