"""Bit-packed binary networks and a pure-NumPy XNOR-popcount inference engine.

This module imports neither TensorFlow nor Keras: a file written by
`binarized.export` runs with NumPy (>= 2.0, for `np.bitwise_count`) alone.

Packing (the layout of Larq Compute Engine): ±1 values are packed along the
channel axis into 32-bit words, least-significant bit first; bit 1 means -1
and bit 0 means +1; the unused tail bits of the last word are 0. For n values
packed into words `a` and `b`, the dot product is `n - 2 * popcount(a ^ b)`
(XNOR-popcount), since a bit of `a ^ b` is 1 exactly where the signs differ.

The engine runs a binary conv or dense layer, its BatchNorm and its sign as
one step: popcounts give the integer pre-activation `s`, and the sign is
`s >= threshold[channel]` (the BatchNorm folded into an integer threshold,
see `docs/packed.md`), so no float exists between two binary layers. Floats
appear only where Keras has real values: the image, average pooling, and the
final BatchNorm's scores.

Keras pads 'same' convolutions with 0, which is neither +1 nor -1. The engine
pads with the bit 0 (+1) and subtracts, per output position and channel, the
contribution the padded taps added (`sum` of the weights at those taps), as
Larq Compute Engine does; see `_padding_correction`.
"""

import json
import math
import zipfile
import zlib

import numpy as np

from binarized.geometry import output_size, same_padding

FORMAT_NAME = "bnn-packed"
FORMAT_VERSION = 1
WORD_BITS = 32
# Positions per chunk in the popcount loops: keeps the (positions, out, words)
# XOR array in cache-friendly sizes.
_CHUNK_WORDS = 1 << 18


# ---------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------


def words_for(channels):
    """Number of 32-bit words holding `channels` bits."""
    return -(-int(channels) // WORD_BITS)


def pack_bits(negative):
    """Packs booleans (True = -1) along the last axis into uint32 words.

    Args:
        negative: Bool array (..., C); True where the value is -1.

    Returns:
        uint32 array (..., ceil(C / 32)); bit i of word j is channel 32 j + i;
        tail bits are 0.
    """
    negative = np.asarray(negative, dtype=bool)
    channels = negative.shape[-1]
    # packbits zero-fills the last byte; whole zero bytes complete the last word.
    packed = np.packbits(negative, axis=-1, bitorder="little")
    n_bytes = 4 * words_for(channels)
    if packed.shape[-1] != n_bytes:
        full = np.zeros(packed.shape[:-1] + (n_bytes,), np.uint8)
        full[..., :packed.shape[-1]] = packed
        packed = full
    return np.ascontiguousarray(packed).view("<u4").astype(np.uint32, copy=False)


def pack(values):
    """Packs ±1 values (any real array; < 0 counts as -1) along the last axis."""
    return pack_bits(np.asarray(values) < 0)


def unpack_bits(words, channels):
    """Inverse of `pack_bits`: bool array (..., channels), True where -1."""
    words = np.ascontiguousarray(words, dtype=np.uint32).astype("<u4", copy=False)
    as_bytes = words.view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, count=int(channels), bitorder="little").astype(bool)


def unpack(words, channels, dtype=np.float32):
    """Packed words -> ±1 values of `dtype`, shape (..., channels)."""
    return np.where(unpack_bits(words, channels), -1, 1).astype(dtype)


def binary_dot(a, b, n):
    """Dot product of two packed ±1 vectors of n values: n - 2 popcount(a ^ b)."""
    return int(n) - 2 * int(np.bitwise_count(np.bitwise_xor(a, b)).sum())


def concat_bits(parts):
    """Concatenates packed tensors along channels, at bit granularity.

    Args:
        parts: List of (words (..., ceil(C_i / 32)), C_i).

    Returns:
        (words (..., ceil(sum C_i / 32)), sum C_i): the channels of part i
        start at bit sum_{j<i} C_j; the tail bits stay 0.
    """
    total = sum(c for _, c in parts)
    lead = parts[0][0].shape[:-1]
    out = np.zeros(lead + (words_for(total) + 1,), np.uint64)
    offset = 0
    for words, channels in parts:
        q, r = divmod(offset, WORD_BITS)
        n = words.shape[-1]
        shifted = words.astype(np.uint64) << np.uint64(r)
        out[..., q:q + n] |= shifted & np.uint64(0xFFFFFFFF)
        out[..., q + 1:q + 1 + n] |= shifted >> np.uint64(WORD_BITS)
        offset += channels
    return out[..., :words_for(total)].astype(np.uint32), total


def _repeat_channels(words, channels, repeats):
    """Each channel repeated `repeats` times in place (c -> c * r .. c * r + r - 1)."""
    if repeats == 1:
        return words, channels
    bits = np.repeat(unpack_bits(words, channels), repeats, axis=-1)
    return pack_bits(bits), channels * repeats


# ---------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------


def _geometry(in_hw, kernel, strides, padding):
    """Output size and padding per axis: ((Ho, Wo), ((top, bottom), (left, right)))."""
    out, pads = [], []
    for size, k, s in zip(in_hw, kernel, strides):
        o, a, b = same_padding(size, k, s) if padding == "same" else (output_size(size, k, s, padding), 0, 0)
        if o <= 0:
            raise ValueError(f"kernel {kernel} does not fit input {in_hw} with padding {padding!r}")
        out.append(o)
        pads.append((a, b))
    return tuple(out), tuple(pads)


def _padded_taps(in_hw, kernel, strides, pads, out_hw, zero=None):
    """Bool (Ho, Wo, kh * kw): True where the tap reads padding (or a pixel of `zero`).

    Args:
        zero: Optional bool (H, W): pixels whose value is 0 at every channel
            (left by a ZeroPadding2D), which a conv must treat as padding.
    """
    (top, bottom), (left, right) = pads
    mask = np.ones((in_hw[0] + top + bottom, in_hw[1] + left + right), bool)
    mask[top:top + in_hw[0], left:left + in_hw[1]] = False if zero is None else zero
    sh, sw = strides
    ho, wo = out_hw
    taps = [
        mask[i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
        for i in range(kernel[0])
        for j in range(kernel[1])
    ]
    return np.stack(taps, axis=-1)


def _windows(x, kernel, strides, pads, out_hw, fill):
    """Yields (tap index, strided view of x for that tap), x (N, H, W, C) padded with `fill`."""
    (top, bottom), (left, right) = pads
    if top or bottom or left or right:
        n, h, w, c = x.shape
        padded = np.full((n, h + top + bottom, w + left + right, c), fill, x.dtype)
        padded[:, top:top + h, left:left + w, :] = x
        x = padded
    sh, sw = strides
    ho, wo = out_hw
    tap = 0
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield tap, x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
            tap += 1


def _im2col(x, kernel, strides, pads, out_hw, fill):
    """(N, H, W, C) -> (N * Ho * Wo, kh * kw * C), taps major, channels minor."""
    n, c = x.shape[0], x.shape[-1]
    cols = np.empty((n, out_hw[0], out_hw[1], kernel[0] * kernel[1], c), x.dtype)
    for tap, view in _windows(x, kernel, strides, pads, out_hw, fill):
        cols[:, :, :, tap, :] = view
    return cols.reshape(n * out_hw[0] * out_hw[1], -1)


def _planar(words):
    """(N, H, W, words) -> (words, N, H, W): each word index becomes one long plane.

    NumPy's loops are fast along long contiguous axes; the channel-word axis
    is short (1-3 words), so the popcount kernels work word-plane by plane.
    """
    return np.ascontiguousarray(np.moveaxis(words, -1, 0))


def _pair_words(rows):
    """(K, ...) uint32 -> (ceil(K / 2), ...) uint64: rows 2i and 2i + 1 in one word.

    A popcount of a XOR (or AND) summed over all words does not depend on how
    the words are grouped, so two 32-bit words can be counted as one 64-bit
    word (half the operations). A zero row pads odd K.
    """
    rows = np.asarray(rows, np.uint32)
    low = rows[0::2].astype(np.uint64)
    if rows.shape[0] > 1:
        high = rows[1::2].astype(np.uint64) << np.uint64(32)
        low[: high.shape[0]] |= high
    return low


def _im2col_planar(planes, kernel, strides, pads, out_hw):
    """Planar words (Wc, N, H, W) -> (taps * Wc, N * Ho * Wo), tap major, zero padding."""
    wc, n = planes.shape[:2]
    (top, bottom), (left, right) = pads
    if top or bottom or left or right:
        padded = np.zeros((wc, n, planes.shape[2] + top + bottom, planes.shape[3] + left + right), planes.dtype)
        padded[:, :, top:top + planes.shape[2], left:left + planes.shape[3]] = planes
        planes = padded
    sh, sw = strides
    ho, wo = out_hw
    taps = kernel[0] * kernel[1]
    cols = np.empty((taps, wc, n, ho, wo), planes.dtype)
    tap = 0
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            cols[tap] = planes[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
            tap += 1
    return cols.reshape(taps * wc, n * ho * wo)


def _xor_popcount(cols, weights):
    """sum_k popcount(cols[k, p] ^ weights[o, k]) -> int32 (P, O).

    Args:
        cols: uint64 (K, P), positions along the long axis.
        weights: uint64 (O, K).
    """
    k, p_total = cols.shape
    o = weights.shape[0]
    out = np.empty((o, p_total), np.int32)
    step = max(256, _CHUNK_WORDS // max(1, o * k))
    for start in range(0, p_total, step):
        block = cols[:, start:start + step]
        x = np.bitwise_xor(block[None, :, :], weights[:, :, None])
        np.sum(np.bitwise_count(x), axis=1, dtype=np.int32, out=out[:, start:start + step])
    return out.T


def _and_popcount(planes, weights, scale):
    """sum_k scale[k] sum_w popcount(planes[k, w, p] & weights[o, w]) -> int64 (P, O).

    Args:
        planes: uint (K, Wd, P).
        weights: uint (O, Wd), same dtype.
        scale: int (K,), the place value of each plane.
    """
    kplanes, nw, p_total = planes.shape
    o = weights.shape[0]
    out = np.empty((o, p_total), np.int64)
    step = max(256, _CHUNK_WORDS // max(1, o * kplanes * nw))
    for start in range(0, p_total, step):
        block = planes[:, :, start:start + step]
        x = np.bitwise_and(block[None], weights[:, None, :, None])  # (O, K, Wd, p)
        counts = np.sum(np.bitwise_count(x), axis=2, dtype=np.int32)  # (O, K, p)
        out[:, start:start + step] = np.tensordot(scale, counts, axes=(0, 1))
    return out.T


# ---------------------------------------------------------------------------
# Values flowing through the engine
# ---------------------------------------------------------------------------


class Bits:
    """A packed ±1 tensor: words (N, H, W, ceil(C / 32)) uint32 and C.

    `zero`, if not None, is a bool (H, W) mask of pixels that are 0 at every
    channel (a ZeroPadding2D's border); their words are 0 and a conv treats
    them as padding.
    """

    kind = "bits"

    def __init__(self, words, channels, zero=None):
        self.words, self.channels = words, int(channels)
        self.zero = zero if zero is not None and zero.any() else None

    @property
    def hw(self):
        return self.words.shape[1:3]

    def to_float(self):
        values = unpack(self.words, self.channels, np.float32)
        if self.zero is not None:
            values[:, self.zero, :] = 0.0
        return values


class Real:
    """A real-valued tensor (N, H, W, C) float32."""

    kind = "float"

    def __init__(self, values):
        self.values = values
        self.channels = values.shape[-1]

    @property
    def hw(self):
        return self.values.shape[1:3]

    def to_float(self):
        return self.values


# ---------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------


class _Node:
    def __init__(self, spec):
        self.spec = spec
        self.name = spec["name"]
        self.inputs = spec.get("in", [])
        if isinstance(self.inputs, int):
            self.inputs = [self.inputs]


class _Input(_Node):
    def run(self, values, images):
        return Real(np.asarray(images, np.float32))


def _padding_correction(in_hw, kernel, strides, pads, out_hw, tap_sums, zero=None):
    """Integer correction (Ho, Wo, O) that turns 'padding is +1' into 'padding is 0'.

    Args:
        tap_sums: int (kh * kw, O): for each tap, what an input of +1 at
            every channel of that tap adds to each output.
    """
    mask = _padded_taps(in_hw, kernel, strides, pads, out_hw, zero)
    if not mask.any():
        return None
    return np.tensordot(mask.astype(np.int64), tap_sums.astype(np.int64), axes=(2, 0)).astype(np.int32)


class _BinaryLayer(_Node):
    """Shared by conv, separable conv and dense: thresholds or scores.

    Output 'bits': `s >= thr` per channel gives +1 (bit 0). Output 'float':
    `float32(s * h) * inv + off` in float32, as Keras's BatchNorm computes.
    On a real-valued input, `s` is a float sum and the sign is taken from the
    same float32 BatchNorm formula.
    """

    def __init__(self, spec, sections):
        super().__init__(spec)
        self.out_kind = spec["out"]
        self.cout = spec["cout"]
        self.h = float(spec["h"])
        where = f"node {self.name!r}"
        self.thr = sections.ints(spec["thr"], self.cout, f"{where} 'thr'") if "thr" in spec else None
        self.inv = sections.floats(spec["inv"], self.cout, f"{where} 'inv'") if "inv" in spec else None
        self.off = sections.floats(spec["off"], self.cout, f"{where} 'off'") if "off" in spec else None

    def _finish(self, s, from_bits):
        """s: (N, Ho, Wo, O) int or float pre-activations -> Bits or Real."""
        if self.out_kind == "bits" and from_bits:
            if self.thr is None:
                raise PackedFormatError(f"node {self.name!r} has a binary input and output but no 'thr'")
            return Bits(pack_bits(s < self.thr), self.cout)
        if self.inv is None or self.off is None:
            raise PackedFormatError(f"node {self.name!r} needs 'inv' and 'off' (its input or output is real)")
        x = (s * self.h).astype(np.float32)
        y = x * self.inv + self.off
        if self.out_kind == "bits":
            return Bits(pack_bits(y < 0), self.cout)
        return Real(y)


class _Windowed(_BinaryLayer):
    """A binary layer that slides a kernel: its geometry and its zero-padding correction."""

    def __init__(self, spec, sections):
        super().__init__(spec, sections)
        self.kernel = tuple(spec["k"])
        self.strides = tuple(spec.get("s", (1, 1)))
        self.padding = spec.get("pad", "valid")
        self.cin = spec["cin"]
        self._corr = {}

    def shape(self, in_hw):
        return _geometry(in_hw, self.kernel, self.strides, self.padding)

    def correction(self, in_hw, zero=None):
        key = (in_hw, None if zero is None else zero.tobytes())
        if key not in self._corr:
            out_hw, pads = self.shape(in_hw)
            self._corr[key] = _padding_correction(in_hw, self.kernel, self.strides, pads, out_hw, self.tap_sums, zero)
        return self._corr[key]


class _Conv(_Windowed):
    """A binary conv (or dense, as a conv whose kernel covers the input)."""

    def __init__(self, spec, sections):
        super().__init__(spec, sections)
        taps = self.kernel[0] * self.kernel[1]
        negative = sections.bits(spec["w"], (self.cout, taps, self.cin), f"node {self.name!r} 'w'")
        self.n = taps * self.cin
        self.w_words = _pair_words(pack_bits(negative).reshape(self.cout, -1).T).T.copy()  # (O, K64)
        self.w_float = np.where(negative, -1, 1).astype(np.float32).reshape(self.cout, -1).T.copy()  # (taps * cin, O)
        # Sum over channels of each tap's ±1 weights: what a padded +1 tap adds.
        self.tap_sums = (self.cin - 2 * negative.sum(axis=2)).T  # (taps, O)

    def macs(self, in_hw):
        out_hw, _ = self.shape(in_hw)
        return out_hw[0] * out_hw[1] * self.n * self.cout


    def preactivation(self, value):
        """Integer (bits input) or float (real input) sums (N, Ho, Wo, O)."""
        in_hw = tuple(value.hw)
        out_hw, pads = self.shape(in_hw)
        n = value.words.shape[0] if value.kind == "bits" else value.values.shape[0]
        if value.kind == "bits":
            cols = _pair_words(_im2col_planar(_planar(value.words), self.kernel, self.strides, pads, out_hw))
            pc = _xor_popcount(cols, self.w_words)
            s = (self.n - 2 * pc).reshape(n, out_hw[0], out_hw[1], self.cout)
            corr = self.correction(in_hw, value.zero)
            if corr is not None:
                s -= corr
            return s
        cols = _im2col(value.values, self.kernel, self.strides, pads, out_hw, 0.0)
        return (cols @ self.w_float).reshape(n, out_hw[0], out_hw[1], self.cout)

    def run(self, values, images):
        value = values[self.inputs[0]]
        return self._finish(self.preactivation(value), value.kind == "bits")


class _Separable(_Windowed):
    """A binary separable conv: ±1 depthwise taps, then ±1 pointwise on integers.

    On bits, the depthwise step XORs each tap's input words with the tap's
    weight words and adds the resulting bits into a bit-sliced counter (one
    word per counter bit), so the depthwise output stays an integer per
    channel, held as bit planes. The pointwise step is then popcounts over
    those planes: with d = taps - 2 u and u = sum_k 2^k plane_k,
    sum_c w_c d_c = taps sum_c w_c - 2 U + 4 sum_k 2^k popcount(plane_k & neg),
    where `neg` holds the pointwise weights' -1 bits and U = sum_c u_c.
    """

    def __init__(self, spec, sections):
        super().__init__(spec, sections)
        self.dm = spec["dm"]
        self.taps = self.kernel[0] * self.kernel[1]
        self.mid = self.cin * self.dm
        dw_neg = sections.bits(spec["wd"], (self.taps, self.mid), f"node {self.name!r} 'wd'")
        pw_neg = sections.bits(spec["wp"], (self.cout, self.mid), f"node {self.name!r} 'wp'")
        self.dw_words = pack_bits(dw_neg)  # (taps, words)
        self.pw_words = pack_bits(pw_neg)  # (O, words)
        self.dw_float = np.where(dw_neg, -1, 1).astype(np.float32)  # (taps, mid)
        self.pw_float = np.where(pw_neg, -1, 1).astype(np.float32).T.copy()  # (mid, O)
        self.pw_sum = (self.mid - 2 * pw_neg.sum(axis=1)).astype(np.int64)  # (O,)
        self.planes = int(self.taps).bit_length()
        self.place = (1 << np.arange(self.planes)).astype(np.int64)
        # A padded tap read as +1 adds dw[tap, c] to channel c, hence
        # sum_c dw[tap, c] pw[c, o] to output o.
        self.tap_sums = np.where(dw_neg, -1, 1).astype(np.int64) @ np.where(pw_neg, -1, 1).astype(np.int64).T

    def macs(self, in_hw):
        out_hw, _ = self.shape(in_hw)
        return out_hw[0] * out_hw[1] * (self.taps * self.mid + self.mid * self.cout)


    def depthwise_planes(self, value):
        """Bit-sliced counts u (per channel: the taps whose input and weight differ).

        Returns:
            (uint32 (K, words, N * Ho * Wo): plane k holds bit k of every count, (Ho, Wo)).
        """
        in_hw = tuple(value.hw)
        out_hw, pads = self.shape(in_hw)
        words, _ = _repeat_channels(value.words, value.channels, self.dm)
        cols = _im2col_planar(_planar(words), self.kernel, self.strides, pads, out_hw)
        nw = words.shape[-1]
        cols = cols.reshape(self.taps, nw, -1)
        planes = np.zeros((self.planes, nw, cols.shape[-1]), np.uint32)
        carry = np.empty_like(cols[0])
        spare = np.empty_like(cols[0])
        for tap in range(self.taps):
            np.bitwise_xor(cols[tap], self.dw_words[tap][:, None], out=carry)
            for k in range(self.planes):
                if k == self.planes - 1:
                    planes[k] ^= carry  # a count never exceeds `taps`: no carry out
                    break
                np.bitwise_and(planes[k], carry, out=spare)
                planes[k] ^= carry
                carry, spare = spare, carry
        return planes, out_hw

    def preactivation(self, value):
        in_hw = tuple(value.hw)
        n = value.words.shape[0] if value.kind == "bits" else value.values.shape[0]
        if value.kind == "bits":
            planes, out_hw = self.depthwise_planes(value)
            counts = np.bitwise_count(planes).sum(axis=1, dtype=np.int64)  # (K, P)
            total = self.place @ counts  # U, (P,)
            masked = _and_popcount(planes, self.pw_words, self.place)  # (P, O)
            s = self.taps * self.pw_sum[None, :] - 2 * total[:, None] + 4 * masked
            s = s.astype(np.int32).reshape(n, out_hw[0], out_hw[1], self.cout)
            corr = self.correction(in_hw, value.zero)
            if corr is not None:
                s -= corr
            return s
        out_hw, pads = self.shape(in_hw)
        x = value.values
        if self.dm == 1:
            depth = np.zeros((n, out_hw[0], out_hw[1], self.mid), np.float32)
            for tap, view in _windows(x, self.kernel, self.strides, pads, out_hw, 0.0):
                depth += view * self.dw_float[tap]
        else:
            # Thin input (the image): per input channel, a (positions, taps) x (taps, dm) product.
            cols = _im2col(x, self.kernel, self.strides, pads, out_hw, 0.0).reshape(-1, self.taps, self.cin)
            weights = self.dw_float.reshape(self.taps, self.cin, self.dm)
            depth = np.empty((cols.shape[0], self.cin, self.dm), np.float32)
            for c in range(self.cin):
                depth[:, c, :] = cols[:, :, c] @ weights[:, c, :]
        return (depth.reshape(-1, self.mid) @ self.pw_float).reshape(n, out_hw[0], out_hw[1], self.cout)

    def run(self, values, images):
        value = values[self.inputs[0]]
        return self._finish(self.preactivation(value), value.kind == "bits")


class _Pool(_Node):
    """Max or average pooling. Max of ±1 is -1 only where all are -1: an AND of the bits."""

    def __init__(self, spec, sections):
        super().__init__(spec)
        self.mode = spec["op"]
        self.kernel = tuple(spec["k"])
        self.strides = tuple(spec["s"])
        self.padding = spec["pad"]

    def run(self, values, images):
        value = values[self.inputs[0]]
        out_hw, pads = _geometry(tuple(value.hw), self.kernel, self.strides, self.padding)
        if self.mode == "maxpool" and value.kind == "bits" and value.zero is None:
            # Padding is all ones (-1), the identity of AND; tail bits stay 0.
            out = None
            for _, view in _windows(value.words, self.kernel, self.strides, pads, out_hw, 0xFFFFFFFF):
                out = view.copy() if out is None else np.bitwise_and(out, view, out=out)
            return Bits(out, value.channels)
        x = value.to_float()
        if self.mode == "maxpool":
            out = None
            for _, view in _windows(x, self.kernel, self.strides, pads, out_hw, -np.inf):
                out = view.copy() if out is None else np.maximum(out, view, out=out)
            return Real(out)
        # Average over the valid taps only (TensorFlow's 'same' average pooling).
        total = np.zeros((x.shape[0], out_hw[0], out_hw[1], x.shape[-1]), np.float32)
        for _, view in _windows(x, self.kernel, self.strides, pads, out_hw, 0.0):
            total += view
        count = (~_padded_taps(tuple(value.hw), self.kernel, self.strides, pads, out_hw)).sum(axis=-1)
        return Real((total / count[None, :, :, None].astype(np.float32)).astype(np.float32))


class _Concat(_Node):
    def __init__(self, spec, sections):
        super().__init__(spec)

    def run(self, values, images):
        parts = [values[i] for i in self.inputs]
        if all(p.kind == "bits" for p in parts):
            zeros = {None if p.zero is None else p.zero.tobytes() for p in parts}
            if len(zeros) == 1:
                words, channels = concat_bits([(p.words, p.channels) for p in parts])
                return Bits(words, channels, parts[0].zero)
        return Real(np.concatenate([p.to_float() for p in parts], axis=-1))


class _Shift(_Node):
    """ZeroPadding2D ('zeropad') or Cropping2D ('crop') by ((top, bottom), (left, right))."""

    def __init__(self, spec, sections):
        super().__init__(spec)
        self.mode = spec["op"]
        (self.top, self.bottom), (self.left, self.right) = spec["amount"]

    def run(self, values, images):
        value = values[self.inputs[0]]
        h, w = value.hw
        if value.kind == "bits":
            zero = np.zeros((h, w), bool) if value.zero is None else value.zero
            arrays = [value.words, zero[None, :, :, None]]
        else:
            arrays = [value.values]
        out = []
        for a in arrays:
            if self.mode == "zeropad":
                # Words of 0 (+1, corrected as padding); the mask marks the new border True.
                shape = (a.shape[0], h + self.top + self.bottom, w + self.left + self.right, a.shape[3])
                full = np.full(shape, a.dtype == bool, a.dtype)
                full[:, self.top:self.top + h, self.left:self.left + w] = a
                out.append(full)
            else:
                out.append(np.ascontiguousarray(a[:, self.top:h - self.bottom, self.left:w - self.right]))
        if value.kind == "bits":
            return Bits(out[0], value.channels, out[1][0, :, :, 0])
        return Real(out[0])


class _Flatten(_Node):
    """A no-op: the dense layer after it reads (N, H, W, C) as a conv over all of H x W."""

    def __init__(self, spec, sections):
        super().__init__(spec)

    def run(self, values, images):
        return values[self.inputs[0]]


_NODE_TYPES = {
    "input": lambda spec, sections: _Input(spec),
    "conv": _Conv,
    "dense": _Conv,
    "sep": _Separable,
    "maxpool": _Pool,
    "avgpool": _Pool,
    "concat": _Concat,
    "flatten": _Flatten,
    "zeropad": _Shift,
    "crop": _Shift,
}


# ---------------------------------------------------------------------------
# Checking a header against its payload
# ---------------------------------------------------------------------------

_INT_DTYPES = {"|i1", "<i1", "<i2", "<i4"}
# The most values one activation of one image may hold: a header whose shapes
# ask for more is refused before anything that large is allocated.
MAX_ACTIVATION = 1 << 24


def _field(spec, key, kind, where, default=None):
    """spec[key], checked to be of `kind` (a type or a tuple); `default` when absent and not None."""
    if not isinstance(spec, dict):
        raise PackedFormatError(f"{where} must be a JSON object, found {type(spec).__name__}")
    if key not in spec:
        if default is not None:
            return default
        raise PackedFormatError(f"{where} has no {key!r}")
    value = spec[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
        raise PackedFormatError(f"{where}: {key!r} has the wrong type ({value!r})")
    return value


def _ints(value, n, what, minimum):
    """A list of `n` ints >= minimum (a tuple), else PackedFormatError."""
    if (not isinstance(value, (list, tuple)) or len(value) != n
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)):
        raise PackedFormatError(f"{what} must be {n} integers >= {minimum}, found {value!r}")
    return tuple(value)


def _span(ref, what):
    """(offset, count) of a section or a reference into one: two ints >= 0."""
    return _ints(ref, 2, what, 0)


def _spec_int(spec, key, where, minimum=1):
    return _ints([_field(spec, key, int, where)], 1, f"{where}: {key!r}", minimum)[0]


def _check_spec(index, spec):
    """Checks one node's fields (types, ranges, inputs earlier in the graph); returns its inputs."""
    where = f"node {index}"
    op = _field(spec, "op", str, where)
    name = _field(spec, "name", str, where)
    where = f"node {index} ({name!r})"
    if op not in _NODE_TYPES:
        raise PackedFormatError(f"unknown node type {op!r} ({where})")
    if (op == "input") != (index == 0):
        raise PackedFormatError(f"the first node, and only it, must be the input ({where} is {op!r})")
    inputs = spec.get("in", [])
    inputs = [inputs] if isinstance(inputs, int) else inputs
    if op != "input":
        _ints(inputs, len(inputs) if isinstance(inputs, list) else -1, f"{where}: 'in'", 0)
        if not inputs or max(inputs) >= index or (op != "concat" and len(inputs) != 1):
            raise PackedFormatError(f"{where}: 'in' must name earlier nodes ({'one' if op != 'concat' else 'some'}), "
                                    f"found {spec.get('in')!r}")
    if op in ("conv", "dense", "sep", "maxpool", "avgpool"):
        _ints(_field(spec, "k", list, where), 2, f"{where}: 'k'", 1)
        _ints(_field(spec, "s", list, where, default=[1, 1]), 2, f"{where}: 's'", 1)
        if _field(spec, "pad", str, where, default="valid") not in ("same", "valid"):
            raise PackedFormatError(f"{where}: 'pad' must be 'same' or 'valid', found {spec['pad']!r}")
    if op in ("conv", "dense", "sep"):
        for key in ("cin", "cout") + (("dm",) if op == "sep" else ()):
            _spec_int(spec, key, where)
        if _field(spec, "out", str, where) not in ("bits", "float"):
            raise PackedFormatError(f"{where}: 'out' must be 'bits' or 'float', found {spec['out']!r}")
        _field(spec, "h", (int, float), where)
    if op in ("zeropad", "crop"):
        amount = _field(spec, "amount", list, where)
        if len(amount) != 2:
            raise PackedFormatError(f"{where}: 'amount' must be [[top, bottom], [left, right]], found {amount!r}")
        for pair in amount:
            _ints(pair, 2, f"{where}: 'amount'", 0)
    return inputs


def _out_shape(node, shapes):
    """The (H, W, C) a node gives for its inputs' shapes; PackedFormatError where they do not fit."""
    where = f"node {node.name!r}"
    if isinstance(node, _Input):
        return None
    ins = [shapes[i] for i in node.inputs]
    h, w, c = ins[0]
    if isinstance(node, _Concat):
        if any(shape[:2] != (h, w) for shape in ins):
            raise PackedFormatError(f"{where} concatenates inputs of different sizes {[s[:2] for s in ins]}")
        return h, w, sum(shape[2] for shape in ins)
    if isinstance(node, _Flatten):
        return h, w, c
    if isinstance(node, _Shift):
        if node.mode == "crop":
            if node.top + node.bottom >= h or node.left + node.right >= w:
                raise PackedFormatError(f"{where} crops {h}x{w} by {node.top + node.bottom}x{node.left + node.right}")
            return h - node.top - node.bottom, w - node.left - node.right, c
        return h + node.top + node.bottom, w + node.left + node.right, c
    if isinstance(node, (_Conv, _Separable)) and node.cin != c:
        raise PackedFormatError(f"{where} expects {node.cin} input channels, its input has {c}")
    try:
        (ho, wo), _ = _geometry((h, w), node.kernel, node.strides, node.padding)
    except ValueError as exc:
        raise PackedFormatError(f"{where}: {exc}") from None
    if node.spec["op"] == "dense" and (ho, wo) != (1, 1):
        raise PackedFormatError(f"{where}: a dense layer's kernel {node.kernel} must cover its input {h}x{w}")
    return ho, wo, node.cout if isinstance(node, (_Conv, _Separable)) else c


def _check_shapes(nodes, input_shape):
    """Walks the graph's shapes: each must fit its node and stay within MAX_ACTIVATION values."""
    shapes = [input_shape]
    for node in nodes[1:]:
        shape = _out_shape(node, shapes)
        if math.prod(shape) > MAX_ACTIVATION:
            raise PackedFormatError(f"node {node.name!r} would hold {math.prod(shape)} values per image, "
                                    f"more than {MAX_ACTIVATION}")
        # Padding tables and im2col hold taps x positions: bounded too.
        if hasattr(node, "kernel") and node.kernel[0] * node.kernel[1] * shape[0] * shape[1] > MAX_ACTIVATION:
            raise PackedFormatError(f"node {node.name!r}: kernel {node.kernel} over {shape[0]}x{shape[1]} "
                                    "positions is too large")
        shapes.append(shape)
    last = shapes[-1]
    if last[:2] != (1, 1):
        raise PackedFormatError(f"the last node {nodes[-1].name!r} gives {last[0]}x{last[1]} positions, not scores (1x1)")
    return last


class _Sections:
    """Reads the typed sections of a packed file's payload.

    Every section and every reference into one is checked against the
    payload's size first, so a header whose sizes disagree with its payload
    is a `PackedFormatError`, never a short read or a large allocation.
    """

    def __init__(self, header, payload):
        self.header = header
        secs = _field(header, "sections", dict, "the header")
        b_off, b_count = _span(secs.get("bits"), "section 'bits'")
        i_ref = secs.get("ints")
        if not isinstance(i_ref, list) or len(i_ref) != 3 or i_ref[2] not in _INT_DTYPES:
            raise PackedFormatError(f"section 'ints' must be [offset, count, one of {sorted(_INT_DTYPES)}], "
                                    f"found {i_ref!r}")
        i_off, i_count = _span(i_ref[:2], "section 'ints'")
        i_dtype = i_ref[2]
        f_off, f_count = _span(secs.get("floats"), "section 'floats'")
        spans = (("bits", b_off, 4 * b_count), ("ints", i_off, np.dtype(i_dtype).itemsize * i_count),
                 ("floats", f_off, 4 * f_count))
        for name, off, size in spans:
            if off + size > payload.size:
                raise PackedFormatError(
                    f"section {name!r} ({size} bytes at offset {off}) runs past the payload's {payload.size} bytes"
                )
        # The sections tile the payload: no byte of it outside them, none in two.
        end = 0
        for name, off, size in sorted(spans, key=lambda span: span[1]):
            if off != end:
                raise PackedFormatError(f"section {name!r} starts at byte {off} of the payload, where "
                                        f"{'the one before it ends' if end else 'the payload starts'} ({end})")
            end = off + size
        if end != payload.size:
            raise PackedFormatError(f"the payload holds {payload.size} bytes, its sections {end}: "
                                    f"{payload.size - end} bytes that no node uses")
        self._bits = np.unpackbits(payload[b_off:b_off + 4 * b_count], bitorder="little").astype(bool)
        self._ints = payload[i_off:i_off + np.dtype(i_dtype).itemsize * i_count].view(i_dtype).astype(np.int32)
        self._floats = payload[f_off:f_off + 4 * f_count].view("<f4").astype(np.float32)
        # Which values the nodes read: each section must be read whole (`check_all_used`).
        self._used = {name: np.zeros(array.size, bool)
                      for name, array in (("bits", self._bits), ("ints", self._ints), ("floats", self._floats))}

    def _slice(self, section, array, ref, what, count):
        start, n = _span(ref, what)
        if count is not None and n != count:
            raise PackedFormatError(f"{what} holds {n} values where its shape needs {count}")
        if start + n > array.size:
            raise PackedFormatError(f"{what} ({n} values at {start}) runs past its section's {array.size}")
        self._used[section][start:start + n] = True
        return array[start:start + n]

    def bits(self, ref, shape, what="bits"):
        return self._slice("bits", self._bits, ref, what, math.prod(shape)).reshape(shape)

    def ints(self, ref, count=None, what="ints"):
        return self._slice("ints", self._ints, ref, what, count)

    def floats(self, ref, count=None, what="floats"):
        return self._slice("floats", self._floats, ref, what, count)

    def check_all_used(self):
        """Raises PackedFormatError where the payload holds values that no node reads.

        The bit stream's last word may end in padding (fewer than 32 bits after the last bit read).
        """
        for name, used in self._used.items():
            read = used.size
            if name == "bits":
                read = int(np.flatnonzero(used)[-1]) + 1 if used.any() else 0
                if used.size - read >= 32:
                    raise PackedFormatError(f"section 'bits' holds {(used.size - read) // 32} words past its last "
                                            "bit read, words that no node uses")
            unread = np.flatnonzero(~used[:read])
            if unread.size:
                raise PackedFormatError(f"section {name!r} holds {unread.size} values that no node uses "
                                        f"(the first at {int(unread[0])})")


def _read_member(archive, name):
    """The 1-D uint8 array `name`.npy of an open .npz, read within the sizes the zip declares.

    `np.load` allocates whatever shape a (possibly mangled) .npy header
    claims before reading; here the claimed size must fit the member's
    declared size first, and the member is read to its end, so zipfile
    checks its CRC.
    """
    info = archive.getinfo(f"{name}.npy")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"{name}.npy has .npy version {version}")
        if dtype != np.uint8 or len(shape) != 1 or shape[0] > info.file_size:
            raise ValueError(f"{name}.npy holds {dtype} {shape}, not the uint8 bytes of a {info.file_size}-byte member")
        data = f.read(shape[0] + 1)  # one more: a longer member is refused, and a read to the end checks the CRC
        if len(data) != shape[0] or f.read(1):
            raise ValueError(f"{name}.npy holds {len(data)} bytes, its header says {shape[0]}")
    return np.frombuffer(data, np.uint8).copy()


def _check_output(header, node, shape, kind):
    """The last node must give what the header's `output` declares: `{"values": per image, "kind": ...}`.

    Files written before `output` was declared have none, and skip this check.
    """
    if "output" not in header:
        return
    output = _field(header, "output", dict, "the header")
    values = _field(output, "values", int, "'output'")
    declared = _field(output, "kind", str, "'output'")
    if math.prod(shape) != values or kind != declared:
        raise PackedFormatError(f"the last node {node.name!r} gives {math.prod(shape)} {kind} values per image, "
                                f"the header declares {values} {declared}")


class PackedFormatError(ValueError):
    """A file is not a packed binary network this engine can read."""


class PackedModel:
    """A binary network run with XNOR-popcount in NumPy.

    Load a file written by `binarized.export` with `PackedModel.load(path)`;
    `predict(images)` returns the scores of the model's last BatchNorm.
    """

    def __init__(self, header, payload):
        """Builds the engine of a header and its payload.

        Raises:
            PackedFormatError: the header is not of this format and version,
                or its fields, sizes or offsets disagree with each other or
                with the payload (checked before anything they size is
                allocated), or the graph fails on a blank image.
        """
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
            found = (header.get("format"), header.get("version")) if isinstance(header, dict) else (None, None)
            raise PackedFormatError(
                f"expected format {FORMAT_NAME!r} version {FORMAT_VERSION}, found {found[0]!r} version {found[1]!r}"
            )
        payload = np.asarray(payload)
        if payload.dtype != np.uint8 or payload.ndim != 1:
            raise PackedFormatError(f"the payload must be 1-D uint8, found {payload.dtype} {payload.shape}")
        self.header = header
        self.input_shape = _ints(_field(header, "input_shape", list, "the header"), 3, "'input_shape'", 1)
        if math.prod(self.input_shape) > MAX_ACTIVATION:
            raise PackedFormatError(f"'input_shape' {self.input_shape} holds more than {MAX_ACTIVATION} values")
        sections = _Sections(header, payload)
        specs = _field(header, "nodes", list, "the header")
        if not specs:
            raise PackedFormatError("the header has no nodes")
        self.nodes = []
        for index, spec in enumerate(specs):
            _check_spec(index, spec)
            self.nodes.append(_NODE_TYPES[spec["op"]](spec, sections))
        self.names = [node.name for node in self.nodes]
        sections.check_all_used()
        last = _check_shapes(self.nodes, self.input_shape)
        # The kinds of values (bits or real) that flow are known only by running: one blank image.
        out = self.run(np.zeros((1,) + self.input_shape, np.float32))
        _check_output(header, self.nodes[-1], last, out.kind)

    @classmethod
    def load(cls, path):
        """Reads a `.npz` file written by `binarized.export.export_model`.

        Raises:
            FileNotFoundError: there is no file at `path`.
            PackedFormatError: naming `path` and the cause, for anything that
                is not a packed binary network this engine can run.
        """
        try:
            with zipfile.ZipFile(path) as archive:
                header = json.loads(_read_member(archive, "header").tobytes().decode("utf-8"))
                payload = _read_member(archive, "payload")
        except FileNotFoundError:
            raise  # a missing file is not a damaged one
        # A mangled zip fails in zipfile, zlib or the .npy parsing, by where the damage is (zipfile
        # raises RuntimeError for a member flagged encrypted, NotImplementedError for an unknown compression).
        except (KeyError, ValueError, EOFError, OSError, RecursionError, RuntimeError, zipfile.BadZipFile,
                zlib.error) as exc:
            raise PackedFormatError(f"{path} is not a packed binary network: {type(exc).__name__}: {exc}") from exc
        try:
            return cls(header, payload)
        except PackedFormatError as exc:
            raise PackedFormatError(f"{path}: {exc}") from exc

    def run(self, images, keep=False):
        """Runs the graph; returns the last value, or all values by node name if `keep`."""
        images = np.asarray(images, np.float32)
        if images.shape[1:] != self.input_shape:
            raise ValueError(f"images must have shape (N, {', '.join(map(str, self.input_shape))}), received {images.shape}")
        values = []
        for node in self.nodes:
            values.append(node.run(values, images))
        if keep:
            return dict(zip(self.names, values))
        return values[-1]

    def predict(self, images, batch_size=256):
        """Scores (N, classes) float32 for float images in [-1, 1]."""
        images = np.asarray(images, np.float32)
        outs = []
        for start in range(0, len(images), batch_size):
            out = self.run(images[start:start + batch_size]).to_float()
            outs.append(out.reshape(out.shape[0], -1))
        return np.concatenate(outs, axis=0)

    def activations(self, images):
        """±1 float32 arrays (N, H, W, C) of every node whose output is bits, by node name."""
        values = self.run(images, keep=True)
        return {name: v.to_float() for name, v in values.items() if v.kind == "bits"}

    def macs(self):
        """(XNOR-popcount MACs, all MACs) per image, counted as `pnas.footprint` counts them.

        A conv or dense layer's MACs are XNOR-popcount when its input is packed
        bits; it finds out by running one blank image.
        """
        values = self.run(np.zeros((1,) + self.input_shape, np.float32), keep=True)
        binary = total = 0
        for node in self.nodes:
            if isinstance(node, (_Conv, _Separable)):
                value = values[self.names[node.inputs[0]]]
                m = node.macs(tuple(value.hw))
                total += m
                binary += m if value.kind == "bits" else 0
        return binary, total


# ------------------------------------------------------------------ command line
def _read_idx(path):
    """An unsigned-byte IDX file (raw or .gz) as a uint8 array, read with NumPy alone."""
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if array.size != math.prod(shape):
        raise ValueError(f"{path} holds {array.size} values, its header says {shape}")
    return array.reshape(shape)


def _mnist_test(folder):
    """MNIST's 10,000 test images, scaled to [-1, 1] as the networks were trained, and their labels."""
    import os

    def find(name):
        for candidate in (name, name + ".gz"):
            path = os.path.join(folder, candidate)
            if os.path.exists(path):
                return path
        raise FileNotFoundError(f"no {name} (or {name}.gz) in {folder}; pass --mnist DIR, the folder of MNIST's "
                                "four IDX files (python -m mnist.download_mnist gets them)")

    images = _read_idx(find("t10k-images-idx3-ubyte"))
    labels = _read_idx(find("t10k-labels-idx1-ubyte"))
    return images.astype(np.float32)[..., np.newaxis] / np.float32(127.5) - np.float32(1.0), labels


def main(argv=None):
    """`python -m binarized.packed FILE.bnn.npz ...`: each file's size, MACs and MNIST test accuracy."""
    import argparse
    import os
    import sys
    import time

    parser = argparse.ArgumentParser(
        prog="python -m binarized.packed",
        description="Runs bit-packed networks (binarized.export) on MNIST's 10,000 test images with NumPy alone.",
    )
    parser.add_argument("files", nargs="+", help="packed networks (.bnn.npz)")
    default_dir = os.environ.get("MNIST_DATA_DIR") or os.path.join("data", "mnist")
    parser.add_argument("--mnist", default=default_dir,
                        help=f"folder of MNIST's IDX files (default: $MNIST_DATA_DIR or data/mnist: {default_dir})")
    args = parser.parse_args(argv)
    try:
        images, labels = _mnist_test(args.mnist)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = 0
    for path in args.files:
        try:
            model = PackedModel.load(path)
        except (OSError, PackedFormatError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        start = time.time()
        predicted = model.predict(images).argmax(axis=1)
        accuracy = float(np.mean(predicted == labels))
        binary, total = model.macs()
        print(f"{path}: test accuracy {accuracy:.4f} ({int(np.sum(predicted == labels))}/{len(labels)}), "
              f"{os.path.getsize(path) / 1024:.2f} KiB, {binary:,} XNOR-popcount MACs + {total - binary:,} "
              f"float MACs per image, {time.time() - start:.1f}s")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
