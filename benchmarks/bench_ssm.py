"""SSM forward+backward: parallel-scan sequence mode vs a Python loop over step mode.

Both compute the same outputs from the same parameters (tests/test_ssm.py checks that); this
measures the time of one forward + backward pass over a (b, l, d) batch and prints the ratio.

    .venv/bin/python benchmarks/bench_ssm.py                 # l = 64, 256, 1024 on the CPU
    .venv/bin/python benchmarks/bench_ssm.py --device cuda

Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

import argparse

import torch
from timing import median_seconds

from eaml_ssm.ssm import SSM


def bench(length: int, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    torch.manual_seed(0)
    model = SSM(
        args.state_dim, args.input_dim, args.output_dim, args.hidden_dim, num_layers=args.num_layers
    ).to(device)
    x = torch.randn(args.batch, length, args.input_dim, device=device)  # (b, l, d)
    h0 = torch.randn(args.batch, model.hidden_size, device=device)  # (b, z)

    def scan() -> None:
        y, h = model(x, h0)
        (y.square().mean() + h.square().mean()).backward()

    def loop() -> None:
        h, ys = h0, []
        for t in range(length):
            y_t, h = model(x[:, t], h)
            ys.append(y_t)
        (torch.stack(ys, dim=1).square().mean() + h.square().mean()).backward()

    t_scan = median_seconds(scan, args.repeats, device, warmup=1)
    t_loop = median_seconds(
        loop, max(1, args.repeats // 3) if length > 256 else args.repeats, device, warmup=1
    )
    return t_scan, t_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--state-dim", type=int, default=16)
    parser.add_argument("--input-dim", type=int, default=8)
    parser.add_argument("--output-dim", type=int, default=4)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"SSM fwd+bwd, b={args.batch}, d={args.input_dim}, h={args.hidden_dim}, "
        f"m={args.state_dim}, layers={args.num_layers}, device={device}, "
        f"threads={torch.get_num_threads()}, torch {torch.__version__}"
    )
    print("| l | scan ms | step loop ms | loop / scan |")
    print("|---|---|---|---|")
    for length in args.lengths:
        t_scan, t_loop = bench(length, args, device)
        print(f"| {length} | {1e3 * t_scan:.2f} | {1e3 * t_loop:.2f} | {t_loop / t_scan:.1f}x |")


if __name__ == "__main__":
    main()
