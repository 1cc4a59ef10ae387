"""`distill export`: a checkpoint as one self-contained model file, checked against the checkpoint before it is
written.

The contract of every exported file (also written to its JSON sidecar, <file>.json):

- input "images": uint8 (N, 3, S, S), RGB, 0-255, where S is the run's --image-size (the size its training images
  were decoded to; decode like training: PIL convert("RGB"), bicubic resize to S x S). N = 1, or any N >= 1 with
  --dynamic-batch (a TorchScript file accepts any N either way: a trace keeps the batch dimension free);
- inside: x / 255, bilinear resize to the model's input size when the run used --resize, (x - mean) / std, the
  model with its evaluated weights (EMA or raw), softmax;
- output "probabilities": float32 (N, C), in the order of the sidecar's "classes".

Formats: ONNX (torch.onnx.export with dynamo=True; run with onnxruntime), TorchScript (torch.jit.trace;
torch.jit.load) and pt2 (torch.export; torch.export.load). Export runs on the CPU in fp32.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from distill import atomic
from distill.augment.ops import Preprocess, to_float
from distill.deploy.formats import DEFAULT_OPSET, FORMATS, sidecar_path
from distill.errors import UserError
from distill.deploy.predict import Loaded, load_for_inference
from distill.engine.checkpoint import file_sha256

TOLERANCE = 1e-4  # largest |p_exported - p_checkpoint| accepted (fp32 on the CPU; measured differences ~1e-7)
PARITY_IMAGES = 8
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


class Deployed(nn.Module):
    """uint8 images -> class probabilities: `distill.engine.loop.predict` of one batch (fp32, no TTA) as one module."""

    def __init__(self, model: nn.Module, preprocess: Preprocess):
        super().__init__()
        self.model, self.preprocess = model, preprocess

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.preprocess(to_float(x))).float().softmax(1)


def sample_images(n: int, size: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


def batch_dims(dynamic: bool):
    return ({0: torch.export.Dim("batch")},) if dynamic else None


def to_onnx(module: nn.Module, example: Tensor, dynamic: bool, opset: int) -> bytes:
    program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], dynamic_shapes=batch_dims(dynamic), verbose=False)
    return program.model_proto.SerializeToString()


def to_torchscript(module: nn.Module, example: Tensor, dynamic: bool, opset: int) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(module, example), buffer)
    return buffer.getvalue()


def to_pt2(module: nn.Module, example: Tensor, dynamic: bool, opset: int) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(module, (example,), dynamic_shapes=batch_dims(dynamic)), buffer)
    return buffer.getvalue()


EXPORTERS = {"onnx": to_onnx, "torchscript": to_torchscript, "pt2": to_pt2}


def export_bytes(fmt: str, module: nn.Module, size: int, dynamic: bool, opset: int = DEFAULT_OPSET) -> bytes:
    """The file's bytes, for a module on the CPU."""
    # torch.export turns a dimension of size 1 into a constant, so a dynamic batch is traced at 2.
    example = sample_images(2 if dynamic else 1, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices, the tracer's remarks on fixed sizes
        return EXPORTERS[fmt](module, example, dynamic, opset)


def load_runner(fmt: str, data: bytes) -> Callable[[Tensor], Tensor]:
    """The exported model read back from its bytes, as a user would load the file: uint8 CPU images in,
    float32 probabilities out."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its notes on the graph are not the user's business
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        else:
            module = torch.export.load(io.BytesIO(data)).module()

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return module(x)

    return run


def parity(module: Deployed, run: Callable[[Tensor], Tensor], size: int, dynamic: bool) -> dict:
    """The exported model against the checkpoint's on the same synthetic images (one at a time at batch 1)."""
    x = sample_images(PARITY_IMAGES, size, seed=1)
    with torch.inference_mode():
        want = module(x)
    got = run(x) if dynamic else torch.cat([run(x[i:i + 1]) for i in range(len(x))])
    diff = (got.float() - want).abs().max().item()
    agree = (got.argmax(1) == want.argmax(1)).sum().item()
    return {"images": len(x), "max_abs_diff": diff, "top1_agreement": agree / len(x), "tolerance": TOLERANCE}


def sidecar(loaded: Loaded, checkpoint: Path, fmt: str, out: Path, dynamic: bool, opset: int, check: dict) -> dict:
    from distill import package_version

    ck, s = loaded.ck, loaded.size
    batch = "N" if dynamic else 1
    return {
        "file": out.name, "format": fmt, "opset": opset if fmt == "onnx" else None, "dynamic_batch": dynamic,
        "classes": ck["classes"], "input_size": s,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW", "channels": "RGB", "range": [0, 255],
                  "shape": [batch, 3, s, s],
                  "decode": f"PIL: convert('RGB') (16-bit grayscale: value / 257), bicubic resize to {s}x{s}"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [batch, len(ck["classes"])],
                   "meaning": "softmax probabilities of the classes, in the order of 'classes'"},
        "inside_the_model": f"x / 255; bilinear resize to {ck['spec']['input_size']}x{ck['spec']['input_size']} "
                            f"if that differs; (x - mean) / std; the network; softmax",
        "model_input_size": ck["spec"]["input_size"], "normalization": ck["normalization"],
        "arch": ck["spec"]["arch"], "role": ck.get("role"), "distill_version": package_version(),
        "torch_version": torch.__version__, "checkpoint": str(checkpoint.resolve()),
        "checkpoint_sha256": file_sha256(checkpoint), "parity": check,
    }


def write_files(out: Path, data: bytes, meta: dict) -> None:
    """The model file and its sidecar, both replaced or neither: a file without its sidecar has no class names,
    and a new file beside an old sidecar would be read with the old one's classes and size."""
    staged: dict[Path, Path] = {}
    try:
        for target, content in ((out, data), (sidecar_path(out), (json.dumps(meta, indent=2) + "\n").encode())):
            staged[target] = stage(content, target, out)
        replace_together(staged)
    except OSError as exc:
        raise not_written(out, exc) from None
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


def not_written(out: Path, exc: OSError) -> UserError:
    return UserError(f"could not write {out} and {sidecar_path(out).name} ({exc.strerror or exc}): free disk space "
                     f"or choose another --out; the previous {out.name} and {sidecar_path(out).name}, if any, are "
                     f"untouched")


def stage(content: bytes, target: Path, out: Path) -> Path:
    """`content` complete and synced in a hidden temporary beside `target`, for replace_together to rename."""
    tmp = hidden_temp(target)
    # temp=tmp: written in place (its rename onto itself does nothing); a failed write leaves no temporary
    atomic.write_atomic(tmp, lambda fh: fh.write(content), lambda exc: not_written(out, exc), temp=tmp)
    return tmp


def hidden_temp(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}{atomic.TEMP_SUFFIX}")


def replace_together(staged: dict[Path, Path]) -> None:
    """Rename each staged temporary over its target, all or none: when one rename fails, every target already
    replaced gets its previous file back (kept under a second name until the end) or is removed if it had none."""
    previous: dict[Path, Path] = {}
    replaced: list[Path] = []
    try:
        for target in staged:
            if os.path.lexists(target) and not (target.is_dir() and not target.is_symlink()):
                previous[target] = keep_previous(target)
        for target, tmp in staged.items():
            os.replace(tmp, target)
            replaced.append(target)
    except BaseException:  # an interruption too: never one new file beside the other's old one
        for target in reversed(replaced):
            if target in previous:
                os.replace(previous.pop(target), target)
            else:
                target.unlink()
        raise
    finally:
        for kept in previous.values():
            kept.unlink(missing_ok=True)
    atomic.fsync_dir(next(iter(staged)).parent)


def keep_previous(target: Path) -> Path:
    """A second name for the file at `target` (a hard link: no copy, no space; a copy where the filesystem has no
    links), to put it back after `target` was replaced."""
    kept = hidden_temp(target)
    try:
        os.link(target, kept, follow_symlinks=False)
    except OSError:
        try:
            shutil.copy2(target, kept, follow_symlinks=False)
        except OSError:
            kept.unlink(missing_ok=True)
            raise
    return kept


def export_checkpoint(checkpoint: Path, fmt: str, out: Path, dynamic: bool, opset: int = DEFAULT_OPSET) -> dict:
    """Export, read the result back and compare it with the checkpoint; only then write the file and sidecar."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}': choose one of {', '.join(FORMATS)}")
    loaded = load_for_inference(checkpoint, torch.device("cpu"))
    module = Deployed(loaded.model, loaded.preprocess).eval()
    data = export_bytes(fmt, module, loaded.size, dynamic, opset)
    check = parity(module, load_runner(fmt, data), loaded.size, dynamic)
    if not check["max_abs_diff"] <= TOLERANCE:  # `not <=`: NaN fails too
        raise UserError(f"the {fmt} export of {checkpoint} does not match it: probabilities differ by up to "
                        f"{check['max_abs_diff']:.2e} (tolerance {TOLERANCE:.0e}), top-1 agreement "
                        f"{check['top1_agreement']:.0%}; nothing was written: try another --format or torch version")
    meta = sidecar(loaded, checkpoint, fmt, out, dynamic, opset, check)
    write_files(out, data, meta)
    return meta


def print_export(meta: dict, out: Path) -> None:
    p = meta["parity"]
    shape = "x".join(map(str, meta["input"]["shape"]))
    print(f"wrote {out} ({meta['format']}{', opset ' + str(meta['opset']) if meta['opset'] else ''}) and "
          f"{out}.json beside it")
    print(f"input: uint8 RGB {shape} (NCHW); output: float32 probabilities of {len(meta['classes'])} classes")
    print(f"parity with {meta['checkpoint']} on {p['images']} synthetic images: largest probability difference "
          f"{p['max_abs_diff']:.1e} (tolerance {p['tolerance']:.0e}), top-1 agreement {p['top1_agreement']:.0%}")
