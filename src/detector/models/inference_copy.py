"""A copy of a model for validation, export and prediction: each BatchNorm folded into its conv, optionally NHWC.

Folding uses torch's ``fuse_conv_bn_eval``: the copy computes what the model computes in eval mode, up to float
rounding (about 1e-6 relative), with one pass over memory less per layer. The model itself is left as it is.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from detector.models.blocks import Conv


def inference_copy(model: nn.Module, *, fuse_bn: bool, channels_last: bool) -> nn.Module:
    """An eval-mode copy of ``model`` without gradients; ``fuse_bn`` folds BatchNorm into the convs before it,
    ``channels_last`` lays the copy out NHWC (its inputs should then be NHWC too)."""
    # Built outside inference mode (Lightning validates inside it): parameters cannot be made from inference tensors.
    with torch.inference_mode(False), torch.no_grad():
        out = copy.deepcopy(model).eval()
        if fuse_bn:
            for m in out.modules():
                if isinstance(m, Conv) and isinstance(m.bn, nn.BatchNorm2d):
                    m.conv = fuse_conv_bn_eval(m.conv, m.bn)
                    m.bn = nn.Identity()
        if channels_last:
            out.to(memory_format=torch.channels_last)
        out.requires_grad_(False)
    return out
