"""GER-UNet and its regular baseline R-UNet."""

from ger_kernels.models.res_unet import PAPER_WIDTHS, GERUNet, RUNet, count_parameters, group_widths

__all__ = ["GERUNet", "RUNet", "PAPER_WIDTHS", "group_widths", "count_parameters"]
