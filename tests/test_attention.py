"""Attention analysis: hook weights vs a manual attention computation, box sums vs brute force."""
from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from _clip_fixtures import TINY_CFG, TinyCLIPModule, register_tiny
from eval.attention import box_mass, box_to_input, cls_patch_attention, vit_last_attention
from eval.model_access import ClipAdapter


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    return register_tiny(tmp_path_factory.mktemp("model_configs"))


def _brute_force_mass(attn: torch.Tensor, box, image_px: int, input_px: int) -> float:
    """Spread each patch weight evenly over its pixels *in the original image* and sum the box pixels."""
    gh, gw = attn.shape
    px_per_patch = image_px // gh  # integer by construction in the tests
    per_pixel = attn.double().repeat_interleave(px_per_patch, 0).repeat_interleave(px_per_patch, 1)
    per_pixel /= px_per_patch**2
    x, y, w, h = box
    return float(per_pixel[y:y + h, x:x + w].sum())


@pytest.mark.parametrize("image_px", [32, 64, 96])
def test_box_mass_equals_brute_force_on_hand_made_maps(image_px):
    g = torch.Generator().manual_seed(image_px)
    input_px, grid = 32, 4
    for _ in range(20):
        attn = torch.rand(grid, grid, generator=g)
        attn /= attn.sum()
        x, y = (int(v) for v in torch.randint(0, image_px - 2, (2,), generator=g))
        w = int(torch.randint(1, image_px - x + 1, (1,), generator=g))
        h = int(torch.randint(1, image_px - y + 1, (1,), generator=g))
        xyxy = box_to_input([x, y, w, h], (image_px, image_px), input_px)
        assert box_mass(attn, xyxy, input_px / grid) == pytest.approx(
            _brute_force_mass(attn, (x, y, w, h), image_px, input_px), abs=1e-12)


def test_box_mass_hand_checked():
    attn = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    assert box_mass(attn, (0, 0, 16, 16), 8) == pytest.approx(1.0)  # whole image
    assert box_mass(attn, (8, 0, 16, 8), 8) == pytest.approx(0.2)  # top-right patch
    assert box_mass(attn, (4, 4, 12, 12), 8) == pytest.approx(0.25 * 1.0)  # a quarter of each patch


def test_box_to_input_follows_resize_and_centre_crop():
    # 64x48 image -> shorter side 32, longer int(32 * 64 / 48) = 42 -> crop 5 px from the left
    assert box_to_input([0, 0, 64, 48], (64, 48), 32) == (0.0, 0.0, 32.0, 32.0)
    x0, y0, x1, y1 = box_to_input([15, 3, 30, 24], (64, 48), 32)
    assert (x0, y0, x1, y1) == pytest.approx((15 * 42 / 64 - 5, 2.0, 45 * 42 / 64 - 5, 18.0))
    # and the crop mapping agrees with open_clip's own transform on a marked pixel block
    from PIL import Image

    img = Image.new("RGB", (64, 48), "black")
    img.paste((255, 255, 255), (30, 12, 42, 36))
    pre = open_clip.image_transform(32, is_train=False, mean=(0, 0, 0), std=(1, 1, 1))
    lit = pre(img)[0] > 0.5
    cols = lit.any(0).nonzero().flatten()
    bx0, _, bx1, _ = box_to_input([30, 12, 12, 24], (64, 48), 32)
    rows = lit.any(1).nonzero().flatten()
    _, by0, _, by1 = box_to_input([30, 12, 12, 24], (64, 48), 32)
    # bicubic resampling blurs the edges by at most a pixel
    assert abs(cols.min().item() - bx0) <= 1 and abs(cols.max().item() + 1 - bx1) <= 1
    assert abs(rows.min().item() - by0) <= 1 and abs(rows.max().item() + 1 - by1) <= 1


def test_hook_weights_match_a_manual_attention_computation(tiny_name):
    module = TinyCLIPModule(tiny_name)
    model = module.model.eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    block = model.visual.transformer.resblocks[-1]
    seen = {}
    handle = block.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    with torch.no_grad():
        reference = model.encode_image(images)
    handle.remove()
    maps = cls_patch_attention(model, images)
    with torch.no_grad():  # the hooks leave the forward pass unchanged
        torch.testing.assert_close(model.encode_image(images), reference)

    # manual: LN -> q, k projections -> per-head softmax(q k^T / sqrt(d)) -> head mean -> CLS row
    x = block.ln_1(seen["x"])
    attn = block.attn
    d, heads = attn.embed_dim, attn.num_heads
    q, k, _ = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).split(d, dim=-1)
    q = q.reshape(3, -1, heads, d // heads).transpose(1, 2)
    k = k.reshape(3, -1, heads, d // heads).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1).mean(1)
    cls = w[:, 0, 1:]
    expected = (cls / cls.sum(-1, keepdim=True)).reshape(3, 4, 4)
    torch.testing.assert_close(maps, expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(3))


def test_non_vit_tower_is_refused(tmp_path):
    rn = {**TINY_CFG, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8}}
    name = register_tiny(tmp_path, "evaltest-tiny-rn", rn)
    model = open_clip.create_model(name)
    with pytest.raises(TypeError, match="needs an open_clip ViT image tower; .*ModifiedResNet"):
        vit_last_attention(model.visual)


@pytest.mark.filterwarnings("ignore:items_per_setting")
def test_cli_on_checkpoint_reports_roles(tmp_path, tiny_name):
    from data_prep.comco import write_eval_set
    from eval.cli import main

    data = tmp_path / "set"
    write_eval_set(data, image_size=64, n_objects=(3,), items_per_setting=4, progress=False)
    module = TinyCLIPModule(tiny_name)
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
                "hyper_parameters": {"model_name": tiny_name}}, ckpt)
    out = tmp_path / "att.json"
    assert main(["attention", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out),
                 "--no-progress"]) == 0
    res = json.loads(out.read_text())["results"]["3"]
    assert res["n_images"] == 12 and list(res["roles"]) == ["large", "small1", "small2"]
    large, small = res["roles"]["large"], res["roles"]["small1"]
    assert large["area_fraction"] > 2 * small["area_fraction"] > 0
    assert 0 < small["mass"] < large["mass"] < 1  # a random-init ViT attends roughly uniformly
    assert res["large_top"]["total"] == 12

    # the same numbers from the library call, and a manifest without boxes is refused
    from eval.attention import attention_by_role
    from eval.manifest import load_eval_set

    adapter = ClipAdapter.from_checkpoint(ckpt)
    direct = attention_by_role(adapter, load_eval_set(data), [3], progress=False)[3]
    assert direct["roles"]["large"]["mass"] == pytest.approx(large["mass"])
    lines = [json.loads(x) for x in (data / "manifest.jsonl").read_text().splitlines()]
    for x in lines:
        x.pop("bboxes")
    (data / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ValueError, match="no 'bboxes'"):
        attention_by_role(adapter, load_eval_set(data), [3], progress=False)
