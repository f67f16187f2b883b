"""A compact, sharded, memory-mapped store for the teacher's top-k signal.

Layout of a store folder (format version 1)::

    topk_index.json          k, vocab_size, dtypes, examples per shard, and per shard: its example range,
                             positions and the byte size of each file (written last: no index, no store)
    shard-00000/ids.npy      [P, k] token ids, uint16 when the vocabulary fits (<= 65536 ids), else uint32
    shard-00000/logps.npy    [P, k] top-k log-probs: float32 (exact, the default), float16, or bfloat16 (stored
                             as its raw 16 bits in a uint16 array: numpy has no bfloat16)
    shard-00000/rest.npy     [P] float32, the log-mass of everything outside the top-k
    shard-00000/offsets.npy  [m + 1] int64, where each of the shard's m examples starts among its P positions
    shard-00001/...

Every shard holds ``examples_per_shard`` consecutive examples (the last one fewer), so an example never spans
shards. The writer streams: each example's rows are appended to the open shard's files as they come, and the
.npy headers are filled in when the shard is full, so memory holds one example, not the whole signal. The
reader opens shards with ``numpy.load(mmap_mode="r")`` and copies out only the examples asked for.

Size: ``bytes_per_token`` per stored position, plus per shard ``shard_overhead_bytes``: four 128-byte .npy
headers and 8 bytes per example (+ 8) of offsets.
"""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from harness.errors import BenchError

FORMAT = "bench-topk"
VERSION = 1
INDEX = "topk_index.json"
FILES = ("ids.npy", "logps.npy", "rest.npy", "offsets.npy")
DEFAULT_EXAMPLES_PER_SHARD = 256
# numpy pads a version-1.0 header to a multiple of 64 bytes; the header dict of any array this store writes
# (a 3-character dtype, at most two dimensions) fits in 128, which the writer checks.
NPY_HEADER_BYTES = 128
VALUE_DTYPES = ("float32", "float16", "bfloat16")
# The largest relative error of a stored log-prob: the dtype's unit roundoff (round to nearest even), for
# |x| in its normal range (float16: >= 2**-14, so for log-probs anywhere above -65504; bfloat16: as float32).
VALUE_TOLERANCE = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}
_VALUE_NUMPY = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2")}
_VALUE_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_value_dtype(value_dtype: str) -> str:
    if value_dtype not in VALUE_DTYPES:
        raise BenchError(f"Unknown top-k value dtype {value_dtype!r}: use one of {', '.join(VALUE_DTYPES)} "
                         "(float32 keeps the teacher's log-probs exactly; the 16-bit ones halve their size).")
    return value_dtype


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds every id below ``vocab_size``."""
    if vocab_size < 1:
        raise BenchError(f"A top-k store needs a vocabulary of at least one token, got {vocab_size}.")
    if vocab_size <= 1 << 16:
        return np.dtype("<u2")
    if vocab_size <= 1 << 32:
        return np.dtype("<u4")
    raise BenchError(f"A vocabulary of {vocab_size} ids does not fit the top-k store's uint32 ids.")


def bytes_per_token(k: int, vocab_size: int, value_dtype: str = "float32") -> int:
    """Bytes one response position takes on disk: k ids, k values and one float32 rest (index and per-shard
    overhead excluded; see ``shard_overhead_bytes``)."""
    value = _VALUE_NUMPY[check_value_dtype(value_dtype)].itemsize
    return k * id_dtype(vocab_size).itemsize + k * value + 4


def shard_overhead_bytes(examples: int) -> int:
    """Bytes a shard of ``examples`` examples takes beyond ``bytes_per_token`` per position."""
    return len(FILES) * NPY_HEADER_BYTES + 8 * (examples + 1)


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    header = buf.getvalue()
    if len(header) != NPY_HEADER_BYTES:  # the space reserved before the data would be wrong
        raise RuntimeError(f"npy header of {len(header)} bytes for shape {shape}; expected {NPY_HEADER_BYTES}")
    return header


class _Appender:
    """One .npy file written row block by row block: its header is written last, into reserved space, once the
    number of rows is known."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]):
        self.path, self.dtype, self.row_shape, self.rows = path, dtype, row_shape, 0
        self.file = open(path, "wb")
        self.file.write(b"\0" * NPY_HEADER_BYTES)

    def append(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).data)
        self.rows += block.shape[0]

    def close(self) -> int:
        self.file.seek(0)
        self.file.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        self.file.close()
        return self.path.stat().st_size

    def abort(self) -> None:
        self.file.close()


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class TopkWriter:
    """Streams examples into a new store folder. Use as a context manager, or call ``close()``; the store is
    readable only once closed (the index is written last)."""

    def __init__(self, folder: Path, k: int, vocab_size: int, value_dtype: str = "float32",
                 examples_per_shard: int = DEFAULT_EXAMPLES_PER_SHARD):
        if k < 1 or examples_per_shard < 1:
            raise BenchError(f"A top-k store needs k >= 1 and examples_per_shard >= 1, got {k} and "
                             f"{examples_per_shard}.")
        self.folder = Path(folder)
        self.k, self.vocab_size = k, vocab_size
        self.value_dtype = check_value_dtype(value_dtype)
        self.id_dtype = id_dtype(vocab_size)
        self.examples_per_shard = examples_per_shard
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self.examples = self.positions = 0
        self._open: dict | None = None
        self._closed = False

    def _start_shard(self) -> None:
        name = f"shard-{len(self.shards):05d}"
        (self.folder / name).mkdir()
        d = self.folder / name
        self._open = {"name": name, "first": self.examples, "offsets": [0],
                      "ids": _Appender(d / "ids.npy", self.id_dtype, (self.k,)),
                      "logps": _Appender(d / "logps.npy", _VALUE_NUMPY[self.value_dtype], (self.k,)),
                      "rest": _Appender(d / "rest.npy", np.dtype("<f4"), ())}

    def _flush(self) -> None:
        s, self._open = self._open, None
        files = {f"{field}.npy": s[field].close() for field in ("ids", "logps", "rest")}
        offsets = self.folder / s["name"] / "offsets.npy"
        np.save(offsets, np.asarray(s["offsets"], dtype="<i8"))
        files["offsets.npy"] = offsets.stat().st_size
        self.shards.append({"name": s["name"], "examples": [s["first"], self.examples],
                            "positions": s["offsets"][-1], "files": files})

    def add(self, ids, logps, rest) -> None:
        """One example: ids and logps [R, k], rest [R] (tensors or arrays), R = its response positions."""
        if self._closed:
            raise RuntimeError("TopkWriter.add after close")
        ids, logps, rest = _to_numpy(ids), logps, _to_numpy(rest)
        r = ids.shape[0]
        if ids.shape != (r, self.k) or tuple(logps.shape) != (r, self.k) or rest.shape != (r,):
            raise BenchError(f"Top-k rows of shapes {ids.shape}, {tuple(logps.shape)}, {rest.shape} do not match "
                             f"[R, k={self.k}], [R, k], [R].")
        if r and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise BenchError(f"Top-k ids must lie in [0, {self.vocab_size}); got {ids.min()}..{ids.max()}.")
        if self._open is None:
            self._start_shard()
        s = self._open
        s["ids"].append(ids)
        s["logps"].append(_encode_values(logps, self.value_dtype))
        s["rest"].append(rest.astype(np.float32, copy=False))
        s["offsets"].append(s["offsets"][-1] + r)
        self.examples += 1
        self.positions += r
        if self.examples - s["first"] == self.examples_per_shard:
            self._flush()

    def close(self) -> TopkReader:
        if not self._closed:
            if self._open is not None:
                self._flush()
            index = {"format": FORMAT, "version": VERSION, "k": self.k, "vocab_size": self.vocab_size,
                     "id_dtype": self.id_dtype.name, "value_dtype": self.value_dtype, "rest_dtype": "float32",
                     "examples_per_shard": self.examples_per_shard, "examples": self.examples,
                     "positions": self.positions, "shards": self.shards}
            tmp = self.folder / f".{INDEX}.tmp"
            tmp.write_text(json.dumps(index, indent=1) + "\n")
            os.replace(tmp, self.folder / INDEX)
            self._closed = True
        return TopkReader(self.folder)

    def abort(self) -> None:
        if self._open is not None:
            for field in ("ids", "logps", "rest"):
                self._open[field].abort()
            self._open = None
        self._closed = True

    def __enter__(self) -> TopkWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def _encode_values(values, value_dtype: str) -> np.ndarray:
    t = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
    # torch rounds to nearest even, for float16 and bfloat16 alike
    t = t.to(torch.float32).to(_VALUE_TORCH[value_dtype])
    if value_dtype == "bfloat16":
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _decode_values(stored: np.ndarray, value_dtype: str) -> np.ndarray:
    if value_dtype == "bfloat16":  # bfloat16 is the top half of a float32: exact
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32)  # a copy, so the tensor made from it owns writable memory


class _Shard:
    def __init__(self, ids: np.ndarray, logps: np.ndarray, rest: np.ndarray, offsets: np.ndarray):
        self.ids, self.logps, self.rest, self.offsets = ids, logps, rest, offsets


class TopkReader:
    """A store opened for reading. ``reader[i]`` is example i's rows as tensors (ids int64 [R, k], logps float32
    [R, k], rest float32 [R]), copied from memory-mapped shards; ``raw(i)`` the stored arrays themselves.

    Shards are mapped on first use and at most ``max_open_shards`` stay mapped (each mapping holds a file
    descriptor)."""

    FIELDS = ("ids", "logps", "rest")

    def __init__(self, folder: Path, max_open_shards: int = 16):
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        try:
            index = json.loads(index_path.read_text())
        except FileNotFoundError:
            raise BenchError(f"{self.folder} holds no complete top-k store ({INDEX} is missing; a store's index is "
                             "written last). Delete the folder so the signal is computed again.") from None
        except (OSError, ValueError) as e:
            raise BenchError(f"The top-k index {index_path} cannot be read ({e}). Delete {self.folder} so the "
                             "signal is computed again.") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
            raise BenchError(f"{index_path} is not a version-{VERSION} top-k store index. Delete {self.folder} so "
                             "the signal is computed again with this version of bench.")
        self.index = index
        self.k, self.vocab_size = index["k"], index["vocab_size"]
        self.value_dtype = index["value_dtype"]
        self.examples_per_shard = index["examples_per_shard"]
        self.positions = index["positions"]
        self.shards = index["shards"]
        self.max_open_shards = max_open_shards
        self._open: OrderedDict[int, _Shard] = OrderedDict()
        for s in self.shards:  # a missing or truncated file is caught now, not hours into training
            for name, size in s["files"].items():
                path = self.folder / s["name"] / name
                actual = path.stat().st_size if path.exists() else None
                if actual != size:
                    what = "is missing" if actual is None else f"has {actual} bytes, the index says {size}"
                    raise self._corrupt(path, what)

    def _corrupt(self, path: Path, what: str) -> BenchError:
        return BenchError(f"Top-k shard file {path} {what}: the cached teacher signal is damaged. Delete "
                          f"{self.folder} so the signal is computed again.")

    def __len__(self) -> int:
        return self.index["examples"]

    @property
    def fields(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Each collated field's dtype and per-position shape."""
        return {"ids": (torch.int64, (self.k,)), "logps": (torch.float32, (self.k,)), "rest": (torch.float32, ())}

    def shard(self, number: int) -> _Shard:
        if number in self._open:
            self._open.move_to_end(number)
            return self._open[number]
        meta = self.shards[number]
        arrays = {}
        for name in FILES:
            path = self.folder / meta["name"] / name
            try:
                arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise self._corrupt(path, f"cannot be read ({e})") from None
        m, p = meta["examples"][1] - meta["examples"][0], meta["positions"]
        value = _VALUE_NUMPY[self.value_dtype]
        expected = {"ids.npy": (id_dtype(self.vocab_size), (p, self.k)), "logps.npy": (value, (p, self.k)),
                    "rest.npy": (np.dtype("<f4"), (p,)), "offsets.npy": (np.dtype("<i8"), (m + 1,))}
        for name, (dtype, shape) in expected.items():
            a = arrays[name]
            if a.dtype != dtype or a.shape != shape:
                raise self._corrupt(self.folder / meta["name"] / name,
                                    f"holds {a.dtype} {a.shape}, the index says {dtype} {shape}")
        offsets = arrays["offsets.npy"]
        if offsets[0] != 0 or offsets[-1] != p or (m and np.any(np.diff(offsets) < 0)):
            raise self._corrupt(self.folder / meta["name"] / "offsets.npy", "holds inconsistent offsets")
        shard = _Shard(arrays["ids.npy"], arrays["logps.npy"], arrays["rest.npy"], np.array(offsets))
        self._open[number] = shard
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return shard

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Example i's stored ids [R, k], values [R, k] (bfloat16 as its uint16 bits) and rest [R]: memory-mapped
        views, not copies."""
        if not 0 <= i < len(self):
            raise BenchError(f"Example {i} is outside the cached top-k signal's {len(self)} examples; the cache "
                             "does not match this data. Delete the cache folder.")
        number = i // self.examples_per_shard
        first = self.shards[number]["examples"][0]
        s = self.shard(number)
        lo, hi = int(s.offsets[i - first]), int(s.offsets[i - first + 1])
        return s.ids[lo:hi], s.logps[lo:hi], s.rest[lo:hi]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, logps, rest = self.raw(i)
        return {"ids": torch.from_numpy(ids.astype(np.int64)),
                "logps": torch.from_numpy(_decode_values(logps, self.value_dtype)),
                "rest": torch.from_numpy(np.array(rest, dtype=np.float32))}

    def disk_bytes(self) -> int:
        """Bytes of every shard file on disk now (the index excluded)."""
        return sum((self.folder / s["name"] / name).stat().st_size for s in self.shards for name in s["files"])

    def bytes_per_position(self) -> float:
        """Measured on-disk bytes per stored position: all shard bytes over all positions."""
        return self.disk_bytes() / self.positions if self.positions else 0.0


def is_store(folder: Path) -> bool:
    return (Path(folder) / INDEX).exists()
