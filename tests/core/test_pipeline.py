import io

import pytest
from PIL import Image

from edgediff.errors import InvalidArgumentError
from edgediff.pipeline import GenerationCancelled
from edgediff.request import SEED_MAX, GenerationRequest
from edgediff.variants import build_variant


@pytest.fixture(scope="module")
def pipeline(tiny_components):
    return build_variant("torch-fp32", tiny_components).pipeline(tiny_components)


def test_same_seed_same_png_bytes(pipeline):
    a = pipeline(seed=11, steps=4).png_bytes()
    b = pipeline(seed=11, steps=4).png_bytes()
    c = pipeline(seed=12, steps=4).png_bytes()
    assert a == b
    assert a != c


def test_eta_is_deterministic_given_the_seed(pipeline):
    a = pipeline(seed=5, steps=4, eta=1.0)
    b = pipeline(seed=5, steps=4, eta=1.0)
    c = pipeline(seed=5, steps=4, eta=0.0)
    assert (a.images == b.images).all()
    assert not (a.latents == c.latents).all()


def test_batch_and_timings(pipeline):
    result = pipeline(seed=1, steps=3, batch=3)
    assert result.images.shape == (3, 64, 64, 3)
    t = result.timings
    assert len(t.step_s) == 3
    assert 0 < t.denoise_s <= t.total_s and 0 < t.decode_s <= t.total_s
    assert t.denoise_s + t.decode_s <= t.total_s + 1e-6


def test_png_metadata_marks_synthetic_weights(pipeline):
    png = pipeline(seed=2, steps=2).png_bytes()
    info = Image.open(io.BytesIO(png)).text
    assert info["edgediff:weights"] == "synthetic"
    assert info["edgediff:preset"] == "tiny"
    assert info["edgediff:variant"] == "torch-fp32"
    assert info["edgediff:steps"] == "2"
    assert info["edgediff:seed"] == "2"


def test_save_writes_one_file_per_image(pipeline, tmp_path):
    paths = pipeline(seed=2, steps=2, batch=2).save(tmp_path / "out.png")
    assert [p.name for p in paths] == ["out.png", "out-1.png"]
    assert all(Image.open(p).size == (64, 64) for p in paths)
    assert not list(tmp_path.glob(".*tmp"))


def test_cancellation_stops_the_loop(pipeline):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(GenerationCancelled, match="step 3/10"):
        pipeline(seed=0, steps=10, should_stop=should_stop)


class ClosingRunner:
    """A UNet runner whose per-generation callable holds something to release (like Triton sequences)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.events: list[str] = []

    def sequence(self):
        runner = self

        class Generation:
            def __call__(self, sample, timestep):
                runner.events.append("step")
                if len(runner.events) == runner.fail_at:
                    raise RuntimeError("inner model failed")
                return sample * 0

            def close(self):
                runner.events.append("close")

        return Generation()


@pytest.mark.parametrize("fail_at", [None, 2])
def test_a_generation_closes_its_unet_callable_finished_or_failed(pipeline, fail_at):
    from edgediff.pipeline import LDMPipeline

    unet = ClosingRunner(fail_at)
    custom = LDMPipeline(unet, pipeline.decoder, pipeline.scheduler_config, pipeline.latent_shape,
                         pipeline.scaling_factor)
    if fail_at is None:
        custom(seed=0, steps=3)
        assert unet.events == ["step", "step", "step", "close"]
    else:
        with pytest.raises(RuntimeError, match="inner model failed"):
            custom(seed=0, steps=3)
        assert unet.events == ["step", "step", "close"]
    stopped = ClosingRunner()
    custom.unet = stopped
    with pytest.raises(GenerationCancelled):
        custom(seed=0, steps=3, should_stop=lambda: len(stopped.events) >= 1)
    assert stopped.events == ["step", "close"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 1001}, "steps"),
        ({"eta": -0.1}, "eta"),
        ({"eta": 1.5}, "eta"),
        ({"eta": float("nan")}, "eta"),
        ({"batch": 0}, "batch"),
        ({"batch": 65}, "batch"),
        ({"seed": -1}, "seed"),
        ({"seed": SEED_MAX + 1}, "seed"),
        ({"steps": 2.0}, "steps"),
        ({"batch": True}, "batch"),
        ({"eta": "0.5"}, "eta"),
    ],
)
def test_validation_names_the_field(kwargs, field):
    args = {"steps": 20, "eta": 0.0, "batch": 1, "seed": 0, **kwargs}
    with pytest.raises(InvalidArgumentError, match=rf"^{field} must be"):
        GenerationRequest.validated(**args)


def test_validated_request_is_typed_and_frozen():
    request = GenerationRequest.validated(seed=SEED_MAX, steps=1000, eta=1, batch=64)
    assert (request.seed, request.steps, request.eta, request.batch) == (SEED_MAX, 1000, 1.0, 64)
    assert isinstance(request.eta, float)
    with pytest.raises(AttributeError):
        request.steps = 2  # type: ignore[misc]


def test_validation_uses_the_entry_points_names_and_max_batch():
    with pytest.raises(InvalidArgumentError, match=r"^batch_size must be an integer in 1\.\.4, got 5$"):
        GenerationRequest.validated(seed=0, steps=1, eta=0.0, batch=5, max_batch=4, names={"batch": "batch_size"})
    with pytest.raises(InvalidArgumentError, match=r"^--steps must be an integer in 1\.\.1000, got 0$"):
        GenerationRequest.validated(seed=0, steps=0, eta=0.0, batch=1, names={"steps": "--steps"})

