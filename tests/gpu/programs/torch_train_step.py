"""Training-step time and page-locked copy speed as a PyTorch user measures them.

Models trained on random data with SGD: a CNN (batch 32 of 3x96x96 images, wide convolutions: a
few milliseconds a step on an H200, so its few hundred launches weigh), a launch-bound MLP
(batch 32, tiny layers: the time is kernel launches) and, with the argument ``big``, a
compute-bound CNN (batch 128 of 3x128x128, 512-channel convolutions: tens of milliseconds of
GPU work a step, about 9 GiB); then 1 GiB copied host to device and back from ``pin_memory()``
tensors with ``non_blocking``. Prints one ``RESULT`` JSON line (milliseconds per step, medians;
GB/s) and PASS.
Run natively and on vGPUs, side by side: scripts/gpu-ladder.sh compares them."""
import json
import statistics
import sys
import time

import torch
import torch.nn as nn

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 30
big = "big" in sys.argv[2:]
dev = torch.device("cuda:0")
torch.manual_seed(0)


def step_ms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for i in range(n + 5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= 5:  # warm-up: cuDNN autotuning, allocator growth
            times.append((time.perf_counter() - t0) * 1e3)
    assert torch.isfinite(loss).item()
    return statistics.median(times)


cnn = nn.Sequential(
    nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    nn.Linear(256, 10)).to(dev)
x = torch.randn(32, 3, 96, 96, device=dev)
y = torch.randint(0, 10, (32,), device=dev)
torch.backends.cudnn.benchmark = True
cnn_ms = step_ms(cnn, x, y, steps)

big_ms = None
if big:
    wide = nn.Sequential(
        nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(256, 512, 3, padding=1), nn.ReLU(), nn.Conv2d(512, 512, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)).to(dev)
    xb = torch.randn(128, 3, 128, 128, device=dev)
    yb = torch.randint(0, 10, (128,), device=dev)
    big_ms = step_ms(wide, xb, yb, max(5, steps // 3))
    del wide, xb, yb
    torch.cuda.empty_cache()

mlp = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(64, 64), nn.ReLU())], nn.Linear(64, 10)).to(dev)
xs = torch.randn(32, 64, device=dev)
ys = torch.randint(0, 10, (32,), device=dev)
mlp_ms = step_ms(mlp, xs, ys, steps * 4)

del cnn, x, y, mlp, xs, ys
torch.cuda.empty_cache()  # the copies below need 1 GiB of a 4 GiB vGPU
size = 1 << 30
host = torch.empty(size, dtype=torch.uint8).pin_memory()
host.fill_(7)
back = torch.empty(size, dtype=torch.uint8).pin_memory()
d = torch.empty(size, dtype=torch.uint8, device=dev)
rates = {"htod": [], "dtoh": []}
for _ in range(4):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    d.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    back.copy_(d, non_blocking=True)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    rates["htod"].append(size / (t1 - t0) / 1e9)
    rates["dtoh"].append(size / (t2 - t1) / 1e9)
assert bool((back[:: 1 << 20] == 7).all().item()), "the page-locked round trip lost bytes"
out = {"cnn_step_ms": round(cnn_ms, 3), "mlp_step_ms": round(mlp_ms, 3),
       "cnn_big_step_ms": None if big_ms is None else round(big_ms, 3),
       "pinned_htod_gbps": round(statistics.median(rates["htod"][1:]), 2),
       "pinned_dtoh_gbps": round(statistics.median(rates["dtoh"][1:]), 2)}
print("RESULT " + json.dumps(out))
print("PASS")
