"""Where the CUDA allocator's peak exceeds the tracked tensor bytes of a training step.

    python perf/cuda_memory_gap.py

``PeakLiveBytes`` counts tensors; the caching allocator also hands out library workspaces (cuDNN
convolution algorithms, cuFFT plans, cuSOLVER). This prints, for one JFB step of a small layer,
the allocator's peak and the tracker's (512-byte blocks), with cuDNN on and off and with the
FFT/SVD-based operator-norm control or the AOL rescaling, so the gap can be attributed.
"""

from __future__ import annotations

import torch

from bench.measure import cuda_allocator_vs_tracked
from bench.model import ReconstructionDEQ
from bench.solver import FixedPointSolver
from bench.tasks import GaussianBlur
from strategies import parse_spec


def gap(control: str, cudnn: bool) -> tuple[int, int]:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = ReconstructionDEQ(GaussianBlur(5, 1.0), 1, 4, 3, lipschitz_control=control).to(device)
    x = torch.rand(2, 1, 12, 12, device=device)
    d = model.task.A(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    solver = FixedPointSolver("fixed_point_iter", max_iter=20, tol=1e-12)

    def step():
        xhat, _ = model(d, parse_spec("jfb"), solver)
        torch.nn.functional.mse_loss(xhat, x).backward()
        opt.step()

    with torch.backends.cudnn.flags(enabled=cudnn):
        return cuda_allocator_vs_tracked(step, lambda: opt.zero_grad(set_to_none=True))


if __name__ == "__main__":
    print("| control | cuDNN | allocator peak | tensor peak (512-B blocks) | gap |")
    print("| --- | --- | --- | --- | --- |")
    for control in ("operator", "aol"):
        for cudnn in (True, False):
            alloc, tensors = gap(control, cudnn)
            print(f"| {control} | {cudnn} | {alloc:,} | {tensors:,} | {alloc - tensors:,} |")
