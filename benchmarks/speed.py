"""Training throughput of the CPU backbones, measured side by side in one run (images per second).

    python benchmarks/speed.py [--threads N] [--steps S]

Compares memory formats (contiguous vs channels-last, which kalib.train uses) for every CPU backbone
of the presets. Report ratios from one run; absolute numbers depend on the machine and its load.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from kalib.models import build_backbone

CONFIGS = {
    "resnet18_narrow w16": ("resnet18_narrow", {"width": 16}),
    "resnet18_narrow w32 +stem pool": ("resnet18_narrow", {"width": 32, "stem_pool": True}),
    "densenet_small": ("densenet_small", {}),
}


def throughput(arch, kwargs, channels_last, batch_size=64, steps=6):
    torch.manual_seed(0)
    model = build_backbone(arch, 10, **kwargs)
    x, y = torch.randn(batch_size, 3, 64, 64), torch.randint(0, 2, (batch_size, 10)).float()
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for step in range(steps + 2):   # two warm-up steps
        if step == 2:
            start = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch_size * steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch 64, 64 px, train step img/s")
    print(f"{'backbone':34s} {'contiguous':>10s} {'chan-last':>10s} {'ratio':>6s}")
    for name, (arch, kwargs) in CONFIGS.items():
        a = throughput(arch, kwargs, False, steps=args.steps)
        b = throughput(arch, kwargs, True, steps=args.steps)
        print(f"{name:34s} {a:10.0f} {b:10.0f} {b / a:6.2f}")


if __name__ == "__main__":
    main()
