"""torch.export of the full model: the custom op is one graph node and the program equals eager."""

from __future__ import annotations

import pytest
import torch

from fgdeploy.models import ModelConfig, create_model, load_model_config
from fgdeploy.models.config import ClassificationConfig, LocalizationConfig

OP = torch.ops.fgdeploy.coordinate_transfer.default


def _export_and_compare(model: torch.nn.Module, size: int, batch: int = 2) -> torch.export.ExportedProgram:
    model.eval()
    torch.manual_seed(0)
    images = torch.rand(batch, 3, size, size)
    program = torch.export.export(model, (images,), dynamic_shapes={"images": {0: torch.export.Dim("batch", max=64)}})
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(OP) == 1
    other = torch.rand(batch + 1, 3, size, size)  # a different batch size through the dynamic dimension
    for x in (images, other):
        with torch.no_grad():
            eager, exported = model(x), program.module()(x)
        assert set(exported) == set(eager)
        for name in eager:
            torch.testing.assert_close(exported[name], eager[name], atol=1e-5, rtol=1e-5, msg=name)
    return program


def test_demo_model_exports_with_the_coordinate_transfer_op():
    torch.manual_seed(0)
    model = create_model(load_model_config("demo"), num_classes=20)
    program = _export_and_compare(model, 160)
    assert len(program.graph_signature.user_inputs) == 1  # only `images`: mean/std are buffers, not inputs
    assert {"mean", "std"} <= set(program.state_dict)


@pytest.mark.parametrize("holistic", ["fc7", "cbp"])
def test_tiny_vgg_paper_model_exports(holistic):
    cfg = ModelConfig(
        name="tiny_vgg", input_size=256,
        localization=LocalizationConfig(backbone="vgg16_tiny", score_layers=("fc7",)),
        classification=ClassificationConfig(backbone="vgg16_tiny", holistic=holistic, holistic_layer="conv5_3",
                                            cbp_dim=64),
    )
    _export_and_compare(create_model(cfg, num_classes=4), 256)


def test_tiny_vgg_fcn8s_fusion_model_exports():
    cfg = ModelConfig(
        name="tiny_vgg_fcn8s", input_size=96,
        localization=LocalizationConfig(backbone="vgg16_tiny", backbone_options={"fc6_padding": 3},
                                        score_layers=("fc7", "pool4", "pool3")),
        classification=ClassificationConfig(backbone="vgg16_tiny", holistic="global_avg"),
    )
    model = create_model(cfg, num_classes=4)
    assert model.heatmap_size == (12, 12)
    _export_and_compare(model, 96)


def test_tiny_vgg_part_net_model_exports_with_the_crops_in_the_graph():
    """The paper's third system (cub_vgg16_cbp_partnets) with tiny VGGs: boxes and crops trace into the program
    (no data-dependent control flow) and it equals eager for another batch size."""
    from fgdeploy.models import PartNetsConfig

    cfg = ModelConfig(
        name="tiny_vgg_partnets", input_size=256,
        localization=LocalizationConfig(backbone="vgg16_tiny", score_layers=("fc7",)),
        classification=ClassificationConfig(backbone="vgg16_tiny", holistic="cbp", holistic_layer="conv5_3",
                                            cbp_dim=64),
        part_nets=PartNetsConfig(backbone="vgg16_tiny", feature="cbp", cbp_dim=32, crop_size=64),
    )
    program = _export_and_compare(create_model(cfg, num_classes=4), 256)
    names = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert sum("grid_sampler" in name for name in names) == 2, sorted(set(names))
