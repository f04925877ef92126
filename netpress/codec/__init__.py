"""The lossless half of netpress: codes, entropy coding and the .press container."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from netpress.codec.codes import Codes, Encoded, SparseValues
from netpress.codec.container import FORMAT_VERSION, from_bytes, read, read_file_bytes, read_manifest, save, to_bytes, write_file
from netpress.codec.entropy import entropy_bits

# BatchNorm's running statistics: L² stores them as one-level constants, so they are coded, but they are not
# weights, and a sparsity figure that counted them would report zeros no pruning made.
BATCHNORM_STATISTICS = ("running_mean", "running_var")


def weight_sparsity(coded: dict[str, Codes | SparseValues]) -> float:
    """Share of zeros among the coded tensors that are weights (all but BatchNorm statistics)."""
    weights = [v for n, v in coded.items() if n.rsplit(".", 1)[-1] not in BATCHNORM_STATISTICS]
    numel = sum(torch.Size(v.shape).numel() for v in weights)
    zeros = sum(round(v.sparsity() * torch.Size(v.shape).numel()) for v in weights)
    return zeros / numel if numel else 0.0


def inspect(path: str | os.PathLike) -> dict:
    """Per-tensor and total figures of a .press file (decodes and verifies every tensor).

    ``payload_bytes`` counts the range-coded words only; ``side_bytes`` the count tables, scales and priors
    that let a decoder rebuild the probability models; level tables and raw tensors are the rest.
    """
    data = read_file_bytes(path)
    manifest, payload = read_manifest(data)
    compressed = from_bytes(data)
    rows, coded, bound_bits = [], {}, 0.0
    for record in manifest["tensors"]:
        value = compressed.tensors[record["name"]]
        numel = 1
        for d in record["shape"]:
            numel *= d
        row = {
            "name": record["name"],
            "kind": record["kind"],
            "shape": record["shape"],
            "coding": record.get("coding", "raw"),
            "bytes": record["length"],
            "bits_per_weight": 8 * record["length"] / numel if numel else 0.0,
        }
        if "dtype" in record:  # a raw tensor's, or a sparse tensor's survivors'
            row["dtype"] = record["dtype"]
        if isinstance(value, (Codes, SparseValues)):
            coded[record["name"]] = value
            symbols = value.symbols if isinstance(value, Codes) else value.mask.to(torch.int32)
            bits = entropy_bits(symbols.numpy())
            bound_bits += bits
            row.update(
                sparsity=value.sparsity(),
                levels=value.num_levels if isinstance(value, Codes) else None,
                entropy_bound_bytes=bits / 8,
                coded_bytes=record.get("coded_bytes", 0) - record.get("side_bytes", 0),
                side_bytes=record.get("side_bytes", 0),
            )
        rows.append(row)
    return {
        "file": str(path),
        "file_bytes": Path(path).stat().st_size,
        "payload_bytes": sum(r.get("coded_bytes", 0) for r in rows),
        "side_bytes": sum(r.get("side_bytes", 0) for r in rows),
        "streams_bytes": len(payload),
        "entropy_bound_bytes": bound_bits / 8,
        "raw_bytes": sum(r["bytes"] for r in rows if r["kind"] == "raw"),
        "params": sum(int(v.numel()) for v in compressed.state_dict().values() if v.is_floating_point()),
        "sparsity": weight_sparsity(coded),
        "source": manifest.get("source", {}),
        "summary": manifest.get("summary", {}),
        "tensors": rows,
    }


__all__ = [
    "FORMAT_VERSION",
    "Codes",
    "Encoded",
    "SparseValues",
    "from_bytes",
    "inspect",
    "read",
    "read_manifest",
    "save",
    "to_bytes",
    "weight_sparsity",
    "write_file",
]
