"""Model size and cost: parameter counts and forward FLOPs.

FLOP convention: `torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per
multiply-accumulate in convolutions and matmuls (BatchNorm, activations and pooling are not
counted). Measured with `forward_gflops` (`distill models` prints every model's): resnet20 0.081 (= 2 x 40.6M
MACs), resnet56 0.251, resnet8x4 0.354, resnet32x4 2.166 and a CIFAR-stem torchvision ResNet50 2.596 GFLOPs
per 32x32 image. Many papers count one FLOP per multiply-add instead (He et al. 2016, "Deep Residual Learning
for Image Recognition", Table 1: ResNet-50 at 224x224 has "3.8 x 10^9" FLOPs, i.e. multiply-adds): halve our
figures to compare with those.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Trainable and frozen parameters; buffers (BatchNorm statistics) are not counted."""
    return sum(p.numel() for p in model.parameters())


def forward_gflops(model: nn.Module, image_size: int, in_channels: int = 3) -> float:
    """Forward GFLOPs (2 per multiply-add) for one image, measured on a batch of 1 in eval mode."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, in_channels, image_size, image_size, device=device, dtype=dtype)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()  # and restored after: BN in train mode would update its running statistics
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def describe(model_name: str, model: nn.Module, image_size: int) -> dict:
    return {"name": model_name, "params": count_params(model), "gflops": forward_gflops(model, image_size)}
