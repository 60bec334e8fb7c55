"""Two vGPUs in one program, as users move data between GPUs: PyTorch (`.to("cuda:1")`,
`copy_(non_blocking=True)`, a step on each device with the gradients summed on cuda:0) and CuPy
(an array made on device 0 read on device 1). Checked against the host; prints PASS or exits 1."""
import sys

import cupy as cp
import torch

ok = True
n = torch.cuda.device_count()
print("devices", n, "| peer 0->1", torch.cuda.can_device_access_peer(0, 1))
if n < 2:
    print("FAIL: needs ORION_VGPU=2")
    sys.exit(1)
x = torch.arange(1 << 20, dtype=torch.float32, device="cuda:0")
y = x.to("cuda:1")
z = torch.empty_like(y)
z.copy_(x, non_blocking=True)
torch.cuda.synchronize(1)
good = bool(torch.equal(y.cpu(), x.cpu())) and bool(torch.equal(z.cpu(), x.cpu()))
print("torch copies cuda:0 -> cuda:1:", good)
ok &= good

# data parallel by hand: the same linear layer on each device, gradients gathered on cuda:0
torch.manual_seed(0)
w0 = torch.randn(256, 64, device="cuda:0", requires_grad=True)
w1 = w0.detach().to("cuda:1").requires_grad_()
batch = torch.randn(64, 256)
(torch.relu(batch[:32].to("cuda:0") @ w0).sum()).backward()
(torch.relu(batch[32:].to("cuda:1") @ w1).sum()).backward()
grad = w0.grad + w1.grad.to("cuda:0")
wc = w0.detach().cpu().requires_grad_()
(torch.relu(batch @ wc).sum()).backward()
good = bool(torch.allclose(grad.cpu(), wc.grad, rtol=1e-4, atol=1e-3))
print("data-parallel gradient on two vGPUs matches the CPU:", good)
ok &= good

with cp.cuda.Device(0):
    a = cp.arange(1 << 16, dtype=cp.float32) * 3
with cp.cuda.Device(1):
    b = cp.asarray(a)
    good = bool(cp.allclose(b, cp.arange(1 << 16, dtype=cp.float32) * 3))
print("cupy array device 0 -> device 1:", good)
ok &= good
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
