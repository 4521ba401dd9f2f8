"""Drop-in layers on p4m / p4 feature maps ``(B, C*S, H, W)``, channels counted in fields."""

from ger_kernels.nn.conv import GroupConv2d, P4ConvP4, P4ConvZ2, P4MConvP4M, P4MConvZ2, conv_class
from ger_kernels.nn.fused import FusedSequential, fused_conv, fuses
from ger_kernels.nn.norm import GroupBatchNorm2d, InputNormalization
from ger_kernels.nn.pool import GroupAvgPool2d, GroupMaxPool2d, GroupOrientationPool
from ger_kernels.nn.skip import group_cat
from ger_kernels.nn.upsample import GroupUpsample

__all__ = [
    "GroupConv2d", "P4MConvZ2", "P4MConvP4M", "P4ConvZ2", "P4ConvP4", "conv_class",
    "GroupBatchNorm2d", "InputNormalization", "FusedSequential", "fused_conv", "fuses", "GroupMaxPool2d",
    "GroupAvgPool2d", "GroupOrientationPool",
    "GroupUpsample", "group_cat",
]
