"""Generic building blocks shared by two or more model families."""

from seglab.layers.conv import ConvNormAct
from seglab.layers.drop import DropPath, drop_path_rates
from seglab.layers.shape import adaptive_avg_pool, nchw_to_nlc, nlc_to_nchw, resize

__all__ = ["ConvNormAct", "adaptive_avg_pool", "DropPath", "drop_path_rates", "nchw_to_nlc", "nlc_to_nchw", "resize"]
