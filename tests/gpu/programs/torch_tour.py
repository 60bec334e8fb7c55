"""A PyTorch tour as users write it: devices, memory, matmul, convolution, a small CNN trained
for a few hundred steps, streams and events, pinned non-blocking copies, a CUDA graph.
Prints the figures a user looks at and PASS; exits 1 on a wrong result."""
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
print("torch", torch.__version__, "cuda", torch.version.cuda)
n = torch.cuda.device_count()
print("device_count", n)
for i in range(n):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name} total_memory {p.total_memory >> 20} MiB")
free, total = torch.cuda.mem_get_info(0)
print(f"mem_get_info free {free >> 20} MiB total {total >> 20} MiB")
dev = torch.device("cuda:0")
a = torch.randn(512, 512)
b = torch.randn(512, 512)
err = (torch.matmul(a.to(dev), b.to(dev)).cpu() - a @ b).abs().max().item()
print("matmul max error", err)
ok = err < 1e-2
x = torch.randn(8, 3, 32, 32)
w = torch.randn(16, 3, 3, 3)
cerr = (F.conv2d(x.to(dev), w.to(dev), padding=1).cpu() - F.conv2d(x, w, padding=1)).abs().max().item()
print("conv2d max error", cerr)
ok &= cerr < 1e-2


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = F.max_pool2d(F.relu(self.c1(t)), 2)
        t = F.max_pool2d(F.relu(self.c2(t)), 2)
        return self.fc(t.flatten(1))


def train(device: torch.device) -> list[float]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data = torch.randn(64, 1, 28, 28, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    net = Net().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(net(data.to(device)), labels.to(device))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


t0 = time.time()
lg = train(dev)
t1 = time.time()
lc = train(torch.device("cpu"))
print(f"cnn {steps} steps: loss {lg[0]:.4f} -> {lg[-1]:.4f} (cpu {lc[-1]:.4f}) in {t1 - t0:.2f} s")
ok &= abs(lg[-1] - lc[-1]) < 0.05 + 0.05 * abs(lc[-1]) and lg[-1] < lg[0]
s = torch.cuda.Stream()
e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
h = torch.arange(1 << 20, dtype=torch.float32).pin_memory()
with torch.cuda.stream(s):
    e0.record()
    d = h.to(dev, non_blocking=True) * 2
    e1.record()
s.synchronize()
print(f"stream copy+scale {e0.elapsed_time(e1):.3f} ms, pinned {h.is_pinned()}")
ok &= bool((d.cpu() == h * 2).all())
static_in = torch.zeros(1024, device=dev)
static_out = torch.zeros(1024, device=dev)
warm = torch.cuda.Stream()
with torch.cuda.stream(warm):
    static_out.copy_(static_in * 3 + 1)
torch.cuda.current_stream().wait_stream(warm)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    static_out.copy_(static_in * 3 + 1)
static_in.copy_(torch.arange(1024, dtype=torch.float32, device=dev))
graph.replay()
torch.cuda.synchronize()
gok = bool((static_out.cpu() == torch.arange(1024, dtype=torch.float32) * 3 + 1).all())
print("cuda graph replay", "ok" if gok else "WRONG")
ok &= gok
print("memory_allocated", torch.cuda.memory_allocated(0) >> 20, "MiB")
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
