"""One MPC control step (random shooting, N x H = 500 x 20, Pendulum-sized default model):
the straightforward loop against `eaml_ssm.control.FastSSMStep`, in one process, one thread.

    python benchmarks/bench_control.py [--repeats 15] [--device cpu]

Straightforward = what a first version does: each horizon step calls the model through
``torch.func.functional_call`` with the adapted weights (as `Adapter.predict` does),
normalizes the inputs and denormalizes the outputs as separate operations. Reports the median
wall and CPU time (``time.process_time``) per control step for both, and their ratio; CPU time
is the per-core cost when other jobs share the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.func import functional_call

from eaml_ssm.config import RunConfig
from eaml_ssm.control.model import SSMDynamics
from eaml_ssm.control.planners import ActionCoder, RandomShooting
from eaml_ssm.control.rewards import get_reward
from eaml_ssm.features import Normalizer
from eaml_ssm.ssm import SSM
from eaml_ssm.tasks import get_family


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num_candidates", type=int, default=500)
    ap.add_argument("--horizon", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    fam = get_family("Pendulum-v1")
    cfg = RunConfig()
    torch.manual_seed(0)
    model = SSM(
        cfg.state_dim, fam.input_dim, fam.target_dim, cfg.hidden_dim, num_layers=cfg.num_layers
    ).to(dev)
    norm = Normalizer(fam.input_dim, fam.target_dim).to(dev)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    coder, reward = ActionCoder(fam, dev), get_reward("Pendulum-v1")
    n, horizon = args.num_candidates, args.horizon
    state = torch.tensor([-1.0, 0.0, 0.0], device=dev)
    hist = (torch.randn(4, 3, device=dev), torch.rand(4, 1, device=dev))

    def straightforward() -> None:
        h = model.init_hidden(1)
        for t in range(4):  # warm-up on the last real steps
            x = norm.normalize_inputs(torch.cat((hist[0][t : t + 1], hist[1][t : t + 1]), 1))
            _, h = functional_call(model, params, (x, h))
        u = torch.rand(n, horizon, 1, device=dev) * 2 - 1
        h = h.expand(n, -1).contiguous()
        s = state.expand(n, -1)
        total = torch.zeros(n, device=dev)
        for t in range(horizon):
            enc, raw = coder.encode(u[:, t])
            x = norm.normalize_inputs(torch.cat((s, enc), 1))
            y, h = functional_call(model, params, (x, h))
            s2 = s + norm.denormalize_targets(y)
            cs = s2[:, :2] / s2[:, :2].norm(dim=1, keepdim=True)
            s2 = torch.cat((cs, s2[:, 2:].clamp(-8, 8)), 1)
            total += reward.reward(s, raw, s2)
            s = s2
        int(torch.argmax(total))

    dyn = SSMDynamics(model, norm, fam, device=dev)
    planner = RandomShooting(n, horizon, seed=0)
    planner.reset(device=dev)

    def fast() -> None:
        dyn.prepare(hist)
        planner.plan(dyn, coder, reward, state)

    fns = {"straightforward": straightforward, "fast": fast}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(3):
                fn()
        for _ in range(args.repeats):  # interleaved: both see the same machine load
            for name, fn in fns.items():
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                wall[name].append(1000 * (time.perf_counter() - t0))
                cpu[name].append(1000 * (time.process_time() - c0))
    results = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}
    for name, (w, c) in results.items():
        print(f"{name:16s} wall {w:7.2f} ms   cpu {c:7.2f} ms")
    ratio = results["straightforward"][1] / results["fast"][1]
    print(f"N x H = {n} x {horizon} on {dev}: fast is {ratio:.2f}x the straightforward loop (CPU)")


if __name__ == "__main__":
    main()
