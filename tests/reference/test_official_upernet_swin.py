"""UperNet-Swin-T against the tree written from the official Swin-Transformer-Semantic-Segmentation code
(`official.swin_transformer_semantic_segmentation`): random weights, the official checkpoint (`{"state_dict": ...}`,
mmseg 0.x keys) converted with `--source official`, strict load, logits, auxiliary logits and stage features compared.

The official code keeps the 7x7 window and its shift on stage maps smaller than the window and pads them (the padded
tokens take part in the attention), where seglab's default, like timm and the classification code, shrinks the window;
the converter sets `shrink_window=False`. At 75x93 the stride-16 and -32 maps (5x6, 3x3) are smaller than the window;
at 230x262 every map is larger (stage 4 is 8x9) and every patch merging sees an odd size.
"""

from __future__ import annotations

import pytest
import torch
from official.swin_transformer_semantic_segmentation.decode_heads import upernet_swin_t
from testkit import compare_segmentor, randomize_

from seglab import create_model
from seglab.convert import convert_checkpoint

pytestmark = pytest.mark.reference



def convert_and_compare(channels: int, aux_channels: int, seed: int, size: tuple[int, ...]) -> None:
    reference = randomize_(upernet_swin_t(num_classes=9, channels=channels, aux_channels=aux_channels), seed).eval()
    result = convert_checkpoint({"state_dict": reference.state_dict(), "meta": {}}, "official", "upernet_swin_t")
    assert result.num_classes == 9
    # the persistent `relative_position_index` buffers (one per block) are recomputed by seglab
    assert len(result.dropped) == 12 and all(k.endswith(".attn.relative_position_index") for k in result.dropped)
    assert result.overrides.get("head_channels", 512) == channels
    assert result.overrides.get("aux_channels", 256) == aux_channels
    ours = create_model("upernet_swin_t", num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)

    x = torch.randn(size, generator=torch.Generator().manual_seed(seed + 1))
    logits = compare_segmentor(ours, reference, x, pair="upernet_swin/official", tol=1e-4)
    assert logits.shape == (1, 9, (size[2] + 3) // 4, (size[3] + 3) // 4)


def test_upernet_swin_matches_official() -> None:
    """75x93 (stages 19x24, 10x12, 5x6, 3x3), narrow heads (128 / 64 channels, read from the checkpoint into
    `head_channels` / `aux_channels` overrides)."""
    convert_and_compare(channels=128, aux_channels=64, seed=40, size=(1, 3, 75, 93))


@pytest.mark.slow
def test_upernet_swin_published_heads_match_official() -> None:
    """230x262 (not multiples of 4 or 32; stages 58x66, 29x33, 15x17, 8x9), the released heads (512 / 256 channels)."""
    convert_and_compare(channels=512, aux_channels=256, seed=41, size=(1, 3, 230, 262))
