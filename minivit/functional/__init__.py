"""``minivit.functional`` (imported as ``F``): every op, with PyTorch's names and arguments.

Each op is a ``Function`` whose backward sits right below its forward; the
lowercase functions here are what models call.
"""
from minivit.functional.activation import (drop_path, dropout, gelu, leaky_relu, log_softmax,  # noqa: F401
                                           relu, sigmoid, softmax)
from minivit.functional.attention import (attention_simple, heads_attention, q_kv_attention, qkv_attention,  # noqa: F401
                                        relative_position_bias, scaled_dot_product_attention)
from minivit.functional.basic import (abs, add, amax, argmax, cat, chunk, clamp, div, exp,  # noqa: F401
                                      expand, flatten, gather, getitem, log, matmul, max, mean, mul,
                                      neg, permute, pow, reshape, roll, split, sqrt, squeeze, stack,
                                      sub, sum, sum_to, tanh, to, transpose, unbind, unsqueeze, var,
                                      where)
from minivit.functional.conv import (adaptive_avg_pool2d, avg_pool2d, conv2d, conv2d_tokens, interpolate,  # noqa: F401
                                     max_pool2d, pad)
from minivit.functional.convnd import (avg_pool3d, conv1d, conv3d, conv_transpose2d,  # noqa: F401
                                       conv_transpose3d, max_pool3d)
from minivit.functional.layout import permute_tokens, rearrange  # noqa: F401
from minivit.functional.linear import linear  # noqa: F401
from minivit.functional.loss import cross_entropy, kl_div, mse_loss, nll_loss  # noqa: F401
from minivit.functional.norm import batch_norm, instance_norm, layer_norm, normalize  # noqa: F401
