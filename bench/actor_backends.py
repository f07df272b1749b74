"""Candidates for the actor's frozen ResNet-10 forward (the seed's GroupNorm `helper2424/resnet10`
at 128x128, batch 1, the actor's share of the CPU): latency p50/p99 over --acts forwards each,
the fp32 floor from this machine's measured matmul peak and the network's FLOPs, and the
largest feature difference from the eager fp32 reference (an exactness guard).

  python bench/actor_backends.py --acts 2000 --threads 1
  python bench/actor_backends.py --batch 256 --acts 5 --threads 2   # the learner's frozen pass

Candidates: eager fp32 (what the actor ran before tracing), eager channels-last, TorchScript
trace (the actor's path today), TorchScript frozen + optimize_for_inference, torch.compile
(inductor; needs a C++ compiler), ONNX Runtime (when installed: `pip install onnxruntime onnx`).
Prints a table; nothing here is a test.
"""
import argparse
import os
import sys
import tempfile
import time

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import torch

from hilserl.learning.encoders import ImageNormalizer, ResNet10, network_input


def conv_flops(model: torch.nn.Module, image: torch.Tensor) -> float:
    """Multiply-adds x 2 of every convolution and linear layer on this input (hooks)."""
    total = [0.0]

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total[0] += 2.0 * k * output.numel()
        elif isinstance(module, torch.nn.Linear):
            total[0] += 2.0 * module.in_features * output.numel()
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(image)
    for h in handles:
        h.remove()
    return total[0]


def matmul_peak_flops(seconds: float = 2.0) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return n * 2 * 1024 ** 3 / (time.perf_counter() - start)


def timed(run, image, acts: int):
    for _ in range(20 if acts >= 100 else 1):  # a few large batches need one warm-up
        run(image)
    times = []
    for _ in range(acts):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--acts', type=int, default=2000)
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads (the actor shares the CPU with the rest of the graph)')
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--batch', type=int, default=1,
                        help='images per forward (256: the exact-math learner\'s frozen pass)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = ResNet10().eval()
    normalize = ImageNormalizer()

    class Backbone(torch.nn.Module):  # uint8-range input -> feature map, as the actor runs it
        def __init__(self):
            super().__init__()
            self.net, self.normalize = net, normalize

        def forward(self, x):
            return self.net(network_input(self.net, self.normalize, x))

    model = Backbone().eval().requires_grad_(False)
    image = torch.randint(0, 256, (args.batch, 3, args.size, args.size)).float()
    flops = conv_flops(net, torch.zeros(1, 3, args.size, args.size)) * args.batch
    peak = matmul_peak_flops()
    floor_ms = flops / peak * 1000
    with torch.no_grad():
        reference = model(image)
    candidates = {}
    candidates['eager fp32'] = lambda x: model(x)
    model_cl = Backbone().eval().requires_grad_(False).to(memory_format=torch.channels_last)
    candidates['eager channels-last'] = lambda x: model_cl(x.contiguous(
        memory_format=torch.channels_last))
    with torch.no_grad():
        traced = torch.jit.trace(model, image, check_trace=False)
        candidates['TorchScript trace (actor today)'] = lambda x: traced(x)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(
            torch.jit.trace(model, image, check_trace=False).eval()))
        candidates['TorchScript frozen + optimize_for_inference'] = lambda x: frozen(x)
    try:
        compiled = torch.compile(model, dynamic=False)
        with torch.no_grad():
            compiled(image)
        candidates['torch.compile (inductor)'] = lambda x: compiled(x)
    except Exception as exc:  # noqa: BLE001 - no compiler, an unsupported op
        print(f'torch.compile: not available ({type(exc).__name__}: {str(exc)[:120]})')
    try:
        import onnxruntime as ort
        path = os.path.join(tempfile.mkdtemp(prefix='actor_onnx_'), 'backbone.onnx')
        torch.onnx.export(model, (image,), path, input_names=['image'], output_names=['fmap'],
                          dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        candidates['ONNX Runtime (CPU)'] = lambda x: torch.from_numpy(
            session.run(None, {'image': x.numpy()})[0])
    except Exception as exc:  # noqa: BLE001 - not installed, export failed
        print(f'ONNX Runtime: not available ({type(exc).__name__}: {str(exc)[:120]})')
    print(f'ResNet-10 (GroupNorm) {args.size}x{args.size}, batch {args.batch}, {args.threads} '
          f'torch thread(s): {flops / 1e6:.0f} MFLOP per forward; matmul peak {peak / 1e9:.1f} '
          f'GFLOP/s -> fp32 floor {floor_ms:.2f} ms; load {os.getloadavg()[0]:.2f}')
    print(f'{"candidate":46} {"p50 ms":>7} {"p99 ms":>7} {"p50/floor":>9} {"max |diff|":>10}')
    with torch.no_grad():
        for name, run in candidates.items():
            diff = float((run(image) - reference).abs().max())
            p50, p99 = timed(run, image, args.acts)
            print(f'{name:46} {p50:7.2f} {p99:7.2f} {p50 / floor_ms:9.2f} {diff:10.2e}',
                  flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
