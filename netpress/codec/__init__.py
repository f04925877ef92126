"""The lossless half of netpress: codes, entropy coding and the .press container."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from netpress.codec.codes import Codes, Encoded, SparseValues
from netpress.codec.container import (
    FORMAT_VERSION,
    checked_streams,
    decode_stream,
    from_bytes,
    read,
    read_file_bytes,
    read_manifest,
    save,
    to_bytes,
    write_file,
)
from netpress.codec.entropy import entropy_bits
from netpress.compressed import tied_in

# BatchNorm's running statistics: L² stores them as one-level constants, so they are coded, but they are not
# weights, and a sparsity figure that counted them would report zeros no pruning made.
BATCHNORM_STATISTICS = ("running_mean", "running_var")


def weight_sparsity(coded: dict[str, Codes | SparseValues]) -> float:
    """Share of zeros among the coded tensors that are weights (all but BatchNorm statistics)."""
    weights = [v for n, v in coded.items() if n.rsplit(".", 1)[-1] not in BATCHNORM_STATISTICS]
    numel = sum(torch.Size(v.shape).numel() for v in weights)
    zeros = sum(round(v.sparsity() * torch.Size(v.shape).numel()) for v in weights)
    return zeros / numel if numel else 0.0


@dataclass(frozen=True)
class _Measured:
    """What ``weight_sparsity`` reads of a decoded tensor, kept by ``inspect`` instead of the tensor."""

    shape: tuple[int, ...]
    zero_share: float

    def sparsity(self) -> float:
        return self.zero_share


def inspect(path: str | os.PathLike) -> dict:
    """Per-tensor and total figures of a .press file (decodes and verifies every tensor).

    ``payload_bytes`` counts the range-coded words only; ``side_bytes`` the count tables, scales and priors
    that let a decoder rebuild the probability models; level tables and raw tensors are the rest.
    """
    manifest, payload = read_manifest(read_file_bytes(path))
    summary = manifest.get("summary") if isinstance(manifest.get("summary"), dict) else {}
    rows, coded, bound_bits, floats = [], {}, 0.0, {}
    for record, stream in checked_streams(manifest, payload):  # one tensor decoded at a time
        value = decode_stream(record, stream)
        numel = torch.Size(record["shape"]).numel()
        stored = value.values if isinstance(value, SparseValues) else value
        floats[record["name"]] = numel if isinstance(value, Codes) or stored.is_floating_point() else 0  # codes give floats
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
            sparsity = value.sparsity()
            coded[record["name"]] = _Measured(tuple(value.shape), sparsity)
            symbols = value.symbols if isinstance(value, Codes) else value.mask.to(torch.int32)
            bits = entropy_bits(symbols.numpy())
            bound_bits += bits
            row.update(
                sparsity=sparsity,
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
        "params": sum(floats.values()) + sum(floats.get(kept, 0) for kept in tied_in(summary).values()),
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
