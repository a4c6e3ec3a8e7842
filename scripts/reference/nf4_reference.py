"""NF4 with double quantization, as bitsandbytes stores it (QLoRA, arXiv:2305.14314).

Writes tests/fixtures/nf4/reference.safetensors: a weight, and its NF4 quantization from
  (1) this file's NumPy replica of bitsandbytes' algorithm (`quantize_4bit(..., quant_type="nf4",
      blocksize=64, compress_statistics=True)`, default backend), and
  (2) bitsandbytes itself, when it imports (CPU is enough),
checked equal bit for bit here, plus the two code books (NF4's 16 values, the signed 8-bit
dynamic map for the scales) as whet's Rust tables must hold them.

The algorithm (bitsandbytes/backends/default/ops.py):
  per block of 64 (flattened, the last block may be short): absmax = max |w|;
  scaled = clamp(w * (1 / absmax), -1, 1); code = number of NF4 midpoints strictly below scaled
  (torch.bucketize, right=False); two codes a byte, the first in the high nibble.
  Double quantization: offset = mean(absmax); absmax - offset quantized blockwise (256) with the
  dynamic map the same way, each 256-block keeping its own f32 absmax (`nested_absmax`).
  Dequantize: absmax = dyn[q] * nested_absmax[block] + offset; w = nf4[code] * absmax (f32).
One choice of ours: the mean is taken in float64 and rounded to f32 (torch sums in f32 in an
order we do not replicate); the fixture records whichever offset bitsandbytes used.

Run: /work/venv-ref/bin/python scripts/reference/nf4_reference.py
"""
import os

import numpy as np
import torch
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "nf4")

NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=np.float32)


def blockwise(x, code, blocksize):
    """bitsandbytes' blockwise quantizer on a flat f32 array: (codes, absmax)."""
    n = x.size
    nblocks = -(-n // blocksize)
    absmax = np.empty(nblocks, np.float32)
    scaled = np.empty(n, np.float32)
    for b in range(nblocks):
        blk = x[b * blocksize:(b + 1) * blocksize]
        am = np.float32(max(np.abs(blk).max(), np.float32(1e-38)))
        absmax[b] = np.abs(blk).max()
        scaled[b * blocksize:(b + 1) * blocksize] = np.clip(blk * (np.float32(1) / am), -1, 1)
    bounds = ((code[:-1] + code[1:]) / np.float32(2)).astype(np.float32)
    q = np.searchsorted(bounds, scaled, side="left").astype(np.uint8)  # == torch.bucketize(right=False)
    return q, absmax


def nf4_quantize(w, dyn, offset=None):
    flat = w.reshape(-1).astype(np.float32)
    q, absmax = blockwise(flat, NF4, 64)
    if q.size % 2:
        q = np.append(q, np.uint8(0))
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8)
    if offset is None:
        offset = np.float32(absmax.astype(np.float64).mean())
    qa, nested = blockwise((absmax - offset).astype(np.float32), dyn, 256)
    return packed, qa, nested, np.float32(offset)


def nf4_dequantize(packed, qa, nested, offset, dyn, n):
    absmax = np.empty(qa.size, np.float32)
    for b in range(qa.size):
        absmax[b] = dyn[qa[b]] * nested[b // 256]
    absmax = (absmax + offset).astype(np.float32)
    codes = np.empty(packed.size * 2, np.uint8)
    codes[0::2] = packed >> 4
    codes[1::2] = packed & 0xF
    vals = NF4[codes[:n]]
    return (vals * np.repeat(absmax, 64)[:n]).astype(np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    import bitsandbytes.functional as F

    dyn = F.create_dynamic_map().numpy().astype(np.float32)
    assert np.array_equal(F.get_4bit_type("nf4", device="cpu").numpy()[:16], NF4)
    torch.manual_seed(0)
    # 300 blocks of 64 plus a short one: the 256-block scale groups end partial too.
    w = (torch.randn(19232) * 0.05).numpy().astype(np.float32)
    w[5] = 0.4  # an outlier, so one block's scale stands out
    w[64:128] = 0.0  # an all-zero block (absmax 0)
    packed, qa, nested, offset = nf4_quantize(w, dyn)

    q_bnb, s = F.quantize_4bit(torch.from_numpy(w), blocksize=64, compress_statistics=True, quant_type="nf4")
    bnb_offset = np.float32(s.offset.item())
    # Replay with bitsandbytes' own offset, so codes and scales must agree bit for bit.
    packed2, qa2, nested2, _ = nf4_quantize(w, dyn, offset=bnb_offset)
    assert np.array_equal(q_bnb.numpy().reshape(-1), packed2), "4-bit codes differ from bitsandbytes"
    assert np.array_equal(s.absmax.numpy(), qa2), "8-bit scale codes differ from bitsandbytes"
    assert np.array_equal(s.state2.absmax.numpy(), nested2), "nested absmax differs from bitsandbytes"
    d_bnb = F.dequantize_4bit(q_bnb, s).numpy()
    d_np = nf4_dequantize(packed2, qa2, nested2, bnb_offset, dyn, w.size)
    assert np.array_equal(d_bnb.reshape(-1), d_np), "dequantized values differ from bitsandbytes"
    print(f"bitsandbytes agrees bit for bit: {packed2.size} code bytes, {qa2.size} scale codes, "
          f"offset ours {offset!r} vs bnb {bnb_offset!r}")

    save_file({
        "weight": w,
        "packed": packed,
        "absmax_q": qa,
        "nested_absmax": nested,
        "offset": np.array([offset], np.float32),
        "dequantized": nf4_dequantize(packed, qa, nested, offset, dyn, w.size),
        # bitsandbytes' own output (its offset may differ from ours by an ulp: see the top).
        "bnb_packed": q_bnb.numpy().reshape(-1),
        "bnb_absmax_q": s.absmax.numpy(),
        "bnb_nested_absmax": s.state2.absmax.numpy(),
        "bnb_offset": np.array([bnb_offset], np.float32),
        "bnb_dequantized": d_bnb.reshape(-1),
        "nf4_code": NF4,
        "dynamic_code": dyn,
    }, os.path.join(OUT, "reference.safetensors"))


if __name__ == "__main__":
    main()
