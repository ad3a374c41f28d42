"""A strict, fast reader of GGUF headers (metadata and tensor table), with the `gguf` package's constants and
dequantizers for the data. The package's own GGUFReader parses the 100k vocabulary strings through numpy
memmap slices (2.6 s for SmolLM2) and trusts counts and offsets; this one bounds every count, offset and size
by the file and reads the same header in ~0.2 s."""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
         7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
STRING, ARRAY = 8, 9
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8  # arrays of arrays (rare in real files); a deep nest would exhaust Python's recursion limit


class GGUFFormatError(ValueError):
    """The file is not a well-formed GGUF file."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # PyTorch order (slowest dimension first)
    qtype: gguf.GGMLQuantizationType
    offset: int  # absolute, in the file
    nbytes: int


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFFormatError(f"truncated: need {n} bytes at offset {self.pos}, file has {len(self.buf)}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, min_item_bytes: int, what: str) -> int:
        n = self.unpack("<Q")
        if n * min_item_bytes > len(self.buf) - self.pos:
            raise GGUFFormatError(f"{what} count {n} cannot fit in the {len(self.buf) - self.pos} bytes left")
        return n

    def string(self) -> str:
        raw = self.take(self.count(1, "string length"))
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as e:
            raise GGUFFormatError(f"string at offset {self.pos - len(raw)} is not UTF-8") from e

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in SCALARS:
            return self.unpack(SCALARS[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            itype = self.unpack("<I")
            if itype in NUMPY:
                size = np.dtype(NUMPY[itype]).itemsize
                n = self.count(size, "array")
                return np.frombuffer(self.take(n * size), dtype=NUMPY[itype]).tolist()
            if itype == STRING:
                return [self.string() for _ in range(self.count(8, "array"))]
            if itype == ARRAY:
                if depth >= MAX_ARRAY_DEPTH:
                    raise GGUFFormatError(f"arrays nested deeper than {MAX_ARRAY_DEPTH} at offset {self.pos}")
                return [self.value(ARRAY, depth + 1) for _ in range(self.count(12, "array"))]
            raise GGUFFormatError(f"unknown array item type {itype}")
        raise GGUFFormatError(f"unknown value type {vtype}")


class GGUFFile:
    """Metadata and tensor table of a GGUF file; tensor data is memory-mapped and dequantized on request."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            size = self.path.stat().st_size
            if size < 24:
                raise GGUFFormatError(f"{self.path}: {size} bytes is too short for a GGUF header")
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        cur = _Cursor(memoryview(self._mmap))
        if bytes(cur.take(4)) != b"GGUF":
            raise GGUFFormatError(f"{self.path}: bad magic, not a GGUF file")
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise GGUFFormatError(f"{self.path}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors = cur.unpack("<Q")
        n_kv = cur.unpack("<Q")
        if n_tensors * 24 > size or n_kv * 12 > size:  # smallest possible tensor info / key-value entry
            raise GGUFFormatError(f"{self.path}: absurd counts ({n_tensors} tensors, {n_kv} metadata keys)")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            if key in self.metadata:
                raise GGUFFormatError(f"duplicate metadata key {key!r}")
            self.metadata[key] = cur.value(cur.unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack("<I")
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFFormatError(f"tensor {name!r}: {n_dims} dimensions")
            dims = [cur.unpack("<Q") for _ in range(n_dims)]
            raw_type = cur.unpack("<I")
            infos.append((name, dims, raw_type, cur.unpack("<Q")))
        alignment = self.metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFFormatError(f"general.alignment {alignment!r} is not a power of two")
        data_start = -(-cur.pos // alignment) * alignment
        self.tensors = {}
        for name, dims, raw_type, rel in infos:
            self.tensors[name] = self._tensor_info(name, dims, raw_type, data_start + rel, size, alignment)
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors.values())
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                raise GGUFFormatError(f"tensors {a!r} and {b!r} overlap in the file")
        if len(self.tensors) != len(infos):
            raise GGUFFormatError("duplicate tensor names")

    @staticmethod
    def _tensor_info(name: str, dims: list[int], raw_type: int, offset: int, size: int, alignment: int) -> TensorInfo:
        try:
            qtype = gguf.GGMLQuantizationType(raw_type)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError) as e:
            raise GGUFFormatError(f"tensor {name!r}: unknown data type {raw_type}") from e
        if any(d <= 0 or d > size * block for d in dims) or dims[0] % block:
            raise GGUFFormatError(f"tensor {name!r}: bad shape {dims} for {qtype.name} (block {block})")
        n = int(np.prod(dims, dtype=object))
        nbytes = n // block * type_size
        if offset % alignment or offset + nbytes > size:
            raise GGUFFormatError(f"tensor {name!r}: data at {offset}..{offset + nbytes} outside the "
                                  f"{size}-byte file or misaligned")
        return TensorInfo(name, tuple(reversed(dims)), qtype, offset, nbytes)

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of a tensor as uint8 [rows, bytes per row] (no copy)."""
        t = self.tensors[name]
        rows = int(np.prod(t.shape[:-1], dtype=np.int64))
        return np.frombuffer(self._mmap, dtype=np.uint8, count=t.nbytes, offset=t.offset).reshape(rows, -1)

    def dequantize(self, name: str) -> np.ndarray:
        """float32 values in PyTorch order."""
        t = self.tensors[name]
        try:
            values = gguf.quants.dequantize(self.raw(name), t.qtype)
        except NotImplementedError as e:
            raise GGUFFormatError(f"tensor {name!r}: the gguf package cannot dequantize {t.qtype.name}") from e
        values = values.reshape(t.shape)
        # float types come back as views of the read-only map: copy those, so torch gets memory it owns
        return values if values.flags.writeable else values.copy()
