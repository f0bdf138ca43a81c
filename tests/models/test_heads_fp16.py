"""FusedClassifier in float16: hidden parts (an all-zero block) must not turn the logits into NaN.

F.normalize clamps the norm at eps=1e-12, which underflows to 0 in fp16 (0/0 = NaN); seen as NaN
logits of the fp16 eager path on an H200 when every part was predicted invisible.
"""

import torch
import torch.nn.functional as F

from fgdeploy.models.heads import FusedClassifier


def test_fused_classifier_fp16_all_parts_hidden_gives_finite_logits():
    assert torch.isnan(F.normalize(torch.zeros(1, 4, dtype=torch.float16), dim=1)).all()  # the trap
    torch.manual_seed(0)
    clf = FusedClassifier(part_dim=4 * 6, holistic_dim=8, num_classes=5, dropout=0.0).eval()
    parts, holistic = torch.zeros(3, 4, 6), torch.rand(3, 8) + 0.1
    ref = clf(parts, holistic)
    out = clf.half()(parts.half(), holistic.half())
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-3)
