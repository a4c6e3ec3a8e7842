"""The BLAS side of scripts/bench/matmul.sh: reads `whet bench matmul`'s JSON lines on stdin,
times torch.matmul (MKL / oneDNN on x86; 2 threads, fp32) on each shape with the same layouts,
and prints a Markdown table with the ratio of times."""
import json
import sys
import time

import torch

torch.set_num_threads(2)
print("| shape | b×m×k×n | gemm ms | BLAS ms | gemm GFLOP/s | BLAS GFLOP/s | gemm/BLAS time |")
print("|---|---|---|---|---|---|---|")
total_whet = total_blas = 0.0
for line in sys.stdin:
    r = json.loads(line)
    b, m, k, n = r["b"], r["m"], r["k"], r["n"]
    x = torch.randn(b, m, k)
    y = torch.randn(b, n, k).transpose(1, 2) if r["transposed"] else torch.randn(b, k, n)
    times = []
    for _ in range(8):
        t = time.perf_counter()
        torch.matmul(x, y)
        times.append(time.perf_counter() - t)
    blas_ms = sorted(times[1:])[len(times[1:]) // 2] * 1e3
    whet_ms = r["ms"]
    total_whet += whet_ms
    total_blas += blas_ms
    gflop = 2 * b * m * k * n / 1e9
    print(f"| {r['shape']} | {b}×{m}×{k}×{n} | {whet_ms:.2f} | {blas_ms:.2f} | {gflop / whet_ms * 1e3:.0f} | "
          f"{gflop / blas_ms * 1e3:.0f} | **{whet_ms / blas_ms:.2f}x** |")
print(f"| all | | {total_whet:.1f} | {total_blas:.1f} | | | **{total_whet / total_blas:.2f}x** |")
