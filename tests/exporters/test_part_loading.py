"""One loader per variant: a part served by Triton's Python backend is the part the variant builds in-process."""

import numpy as np
import pytest
import torch

from edgediff.errors import EdgediffError
from edgediff.variants import BuildOptions, build_variant, get_variant
from exporters.part_runtime import PartRunner, PartSpec
from exporters.repository import export_repository, model_names

CPU_ARTIFACTS = {"jit-fp32": "1/model.pt", "openvino-fp32": "1/model.xml"}


@pytest.mark.parametrize("variant", sorted(CPU_ARTIFACTS))
def test_a_served_part_computes_what_the_variant_builds(variant, tiny_components, tmp_path):
    if not get_variant(variant).availability().ok:
        pytest.skip(f"{variant}: {get_variant(variant).availability().reason}")
    repo = tmp_path / "r"
    export_repository(model="tiny", target="cpu", variants=[variant], repo=repo)
    built = build_variant(variant, tiny_components, BuildOptions(threads=1))
    sample = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    timestep = torch.tensor([900, 20], dtype=torch.int64)
    latents = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(4))
    names = model_names(variant)
    unet = PartRunner(PartSpec(variant=variant, part="unet", preset="tiny", artifact=CPU_ARTIFACTS[variant],
                               threads=1), repo / names["unet"])
    vqdec = PartRunner(PartSpec(variant=variant, part="vqdec", preset="tiny", artifact=CPU_ARTIFACTS[variant],
                                threads=1), repo / names["vqdec"])
    got = unet({"sample": sample.numpy(), "timestep": timestep.numpy().reshape(2, 1)})  # Triton's [batch, 1]
    np.testing.assert_array_equal(got, built.unet.sequence()(sample, timestep).numpy())
    np.testing.assert_array_equal(vqdec({"latents": latents.numpy()}), built.decoder(latents).numpy())


def test_the_eager_baseline_loads_one_part_from_a_weights_folder(tiny_components, tmp_path):
    from edgediff.models import save_components

    folder = save_components(tiny_components, tmp_path / "weights")
    variant = get_variant("torch-fp32")
    built = build_variant("torch-fp32", tiny_components)
    decoder = variant.load_part("vqdec", folder, BuildOptions(), preset=tiny_components.preset)
    latents = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(decoder(latents), built.decoder(latents))
    with pytest.raises(EdgediffError, match="torch-fp32 loads unet and vqdec from weights, not 'unet-full'"):
        variant.load_part("unet-full", folder, BuildOptions(), preset=tiny_components.preset)


def test_a_variant_without_single_artifacts_says_so(tmp_path, tiny_components):
    with pytest.raises(EdgediffError, match="openvino-int8-lowmem does not run a part from a single artifact"):
        get_variant("openvino-int8-lowmem").load_part("unet", tmp_path, BuildOptions(),
                                                      preset=tiny_components.preset)
