"""An independent implementation of SPEC sections 1 and 3 for tests: group elements as
2x2 integer matrices on centred (row, col) coordinates, and a loop-based group
convolution. It shares no code with ger_kernels."""

import itertools

import numpy as np
import torch

ROT = np.array([[0, -1], [1, 0]])    # where rot90 (counter-clockwise) sends a centred tap
FLIP = np.array([[-1, 0], [0, 1]])   # where flip_H sends it


def matrices(order: int) -> list[np.ndarray]:
    """``M_t = FLIP^m ROT^r`` for ``t = 4*m + r``."""
    return [np.linalg.matrix_power(FLIP, t // 4) @ np.linalg.matrix_power(ROT, t % 4) for t in range(order)]


def index_of(ms: list[np.ndarray], m: np.ndarray) -> int:
    return next(i for i, x in enumerate(ms) if np.array_equal(x, m))


def inv_mul_table(order: int) -> np.ndarray:
    ms = matrices(order)
    return np.array([[index_of(ms, np.round(np.linalg.inv(a)).astype(int) @ b) for b in ms] for a in ms])


def transform_filter(w: torch.Tensor, m: np.ndarray) -> torch.Tensor:
    """``A_t(w)[p] = w[M_t^-1 p]`` for a square ``(k, k)`` filter."""
    k = w.shape[-1]
    c = (k - 1) / 2
    inv = np.round(np.linalg.inv(m)).astype(int)
    out = torch.empty_like(w)
    for i, j in itertools.product(range(k), range(k)):
        si, sj = inv @ np.array([i - c, j - c]) + c
        out[..., i, j] = w[..., int(round(si)), int(round(sj))]
    return out


def naive_group_conv2d(x, w, bias, stride, padding, dilation, order):
    """Loops over output/input fields, orientations and taps; vectorized over batch and space."""
    c_out, c_in, s_in, k, _ = w.shape
    ms = matrices(order)
    table = inv_mul_table(order)
    batch, _, height, width = x.shape
    h_out = (height + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    w_out = (width + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    xp = torch.nn.functional.pad(x, (padding,) * 4)
    out = torch.zeros(batch, c_out * order, h_out, w_out, dtype=x.dtype)
    for o, t, i, s in itertools.product(range(c_out), range(order), range(c_in), range(s_in)):
        source = 0 if s_in == 1 else table[t, s]
        filt = transform_filter(w[o, i, source], ms[t])
        for dy, dx in itertools.product(range(k), range(k)):
            window = xp[:, i * s_in + s, dy * dilation::stride, dx * dilation::stride][:, :h_out, :w_out]
            out[:, o * order + t] += filt[dy, dx] * window
    if bias is not None:
        out += bias.repeat_interleave(order)[None, :, None, None]
    return out
