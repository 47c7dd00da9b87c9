"""Write tensors as safetensors one at a time, straight from the (memory-mapped) checkpoint.

`safetensors.torch.save_file` first copies every tensor into one in-memory buffer (the whole
3.4 GB UNet at once); this writer streams each tensor's bytes to the file instead, so importing
the 5 GB official checkpoint needs little memory beyond the file's own pages. The file is the
standard format (8-byte header length, JSON header, raw little-endian data), read by
`safetensors.torch.load_file` and diffusers' `from_pretrained`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = torch.float32,
                      metadata: dict[str, str] | None = None) -> int:
    """Write `tensors` (floating ones cast to `dtype`) to `path`, one tensor in memory at a time; returns bytes written."""
    names = sorted(tensors)
    cast = {n: dtype if dtype is not None and tensors[n].is_floating_point() else tensors[n].dtype for n in names}
    header, offset = {}, 0
    for name in names:
        nbytes = tensors[name].numel() * torch.empty((), dtype=cast[name]).element_size()
        header[name] = {"dtype": DTYPES[cast[name]], "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt", **(metadata or {})}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(len(blob).to_bytes(8, "little"))
        handle.write(blob)
        for name in names:
            flat = tensors[name].to(cast[name]).contiguous().reshape(-1)  # no copy for a contiguous fp32 tensor
            if flat.numel():
                handle.write(memoryview(flat.view(torch.uint8).numpy()))
    return 8 + len(blob) + offset
