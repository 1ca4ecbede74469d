"""Convert CTranslate2 Whisper models to whisper.cpp's legacy ggml format, and quantize them.

The file formats are described in ``docs/model-formats.md``; this module
needs nothing but numpy, so models can be built on a machine with no internet.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from workers.atomicfile import PUBLIC, AtomicFile

GGML_MAGIC = 0x67676D6C
CT2_BINARY_VERSION = 6
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8
FTYPE_F16, FTYPE_Q8_0 = 1, 2007
QK8_0 = 32

# Tensors that whisper.cpp keeps in f32 whatever the file type.
F32_TENSORS = {
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
}


class ConversionError(ValueError):
    """A model file is not what the converter expects."""


@dataclass
class Ct2Model:
    """The variables of a CTranslate2 Whisper model, by name."""

    variables: dict[str, np.ndarray]
    vocabulary: list[str]


# ---------------------------------------------------------------- CTranslate2


def _read(f: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ConversionError("model.bin ends in the middle of a record")
    return struct.unpack(fmt, data)


def _read_string(f: BinaryIO) -> str:
    (length,) = _read(f, "<H")
    raw = f.read(length)
    if len(raw) != length or not raw.endswith(b"\0"):
        raise ConversionError("model.bin holds a malformed string")
    return raw[:-1].decode("utf-8")


def read_ct2_model_bin(path: Path) -> dict[str, np.ndarray]:
    """Read every variable (aliases resolved) of a CTranslate2 ``model.bin``."""
    with open(path, "rb") as f:
        (version,) = _read(f, "<I")
        if version != CT2_BINARY_VERSION:
            raise ConversionError(f"unsupported CTranslate2 binary version {version}")
        spec = _read_string(f)
        if spec != "WhisperSpec":
            raise ConversionError(f"not a Whisper model: spec is {spec!r}")
        _read(f, "<I")  # revision
        (count,) = _read(f, "<I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = _read_string(f)
            (ndim,) = _read(f, "<B")
            dims = _read(f, f"<{ndim}I") if ndim else ()
            (dtype_id,) = _read(f, "<B")
            (nbytes,) = _read(f, "<I")
            if dtype_id not in CT2_DTYPES:
                raise ConversionError(f"{name}: unknown dtype {dtype_id}")
            dtype = np.dtype(CT2_DTYPES[dtype_id])
            expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            if nbytes != expected:
                raise ConversionError(f"{name}: {nbytes} bytes for shape {dims}")
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ConversionError(f"{name}: data is truncated")
            variables[name] = np.frombuffer(raw, dtype=dtype).reshape(dims)
        (aliases,) = _read(f, "<I")
        for _ in range(aliases):
            alias, target = _read_string(f), _read_string(f)
            if target in variables:
                variables[alias] = variables[target]
    return variables


def load_ct2_model(model_dir: Path) -> Ct2Model:
    """Load ``model.bin`` and ``vocabulary.txt`` (or ``vocabulary.json``) from a CTranslate2 directory."""
    model_dir = Path(model_dir)
    model_bin = model_dir / "model.bin"
    if not model_bin.is_file():
        raise ConversionError(f"{model_dir} has no model.bin")
    if (model_dir / "vocabulary.txt").is_file():
        text = (model_dir / "vocabulary.txt").read_text(encoding="utf-8")
        vocabulary = text.split("\n")
        if vocabulary and vocabulary[-1] == "":
            vocabulary.pop()
    elif (model_dir / "vocabulary.json").is_file():
        vocabulary = json.loads((model_dir / "vocabulary.json").read_text(encoding="utf-8"))
    else:
        raise ConversionError(f"{model_dir} has no vocabulary.txt")
    return Ct2Model(read_ct2_model_bin(model_bin), vocabulary)


def gpt2_byte_decoder() -> dict[str, int]:
    """Map GPT-2's printable byte symbols back to the bytes they stand for."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


def token_bytes(vocabulary: list[str]) -> list[bytes]:
    """Decode the ordinary tokens (those before the first ``<|...|>``) to raw bytes."""
    decoder = gpt2_byte_decoder()
    out: list[bytes] = []
    for token in vocabulary:
        if token.startswith("<|") and token.endswith("|>"):
            break
        try:
            out.append(bytes(decoder[ch] for ch in token))
        except KeyError as exc:
            raise ConversionError(f"token {token!r} is not GPT-2 byte-level text") from exc
    return out


# ----------------------------------------------------------------- mel filters


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    freq = np.asarray(freq, dtype=np.float64)
    mels = freq / f_sp
    high = freq >= min_log_hz
    mels[high] = min_log_mel + np.log(freq[high] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    freqs = f_sp * mels
    high = mels >= min_log_mel
    freqs[high] = min_log_hz * np.exp(logstep * (mels[high] - min_log_mel))
    return freqs


def mel_filters(n_mels: int, sample_rate: int = 16000, n_fft: int = 400) -> np.ndarray:
    """Slaney-style mel filter bank, as librosa builds it for Whisper."""
    fft_freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    edges = np.array([0.0, sample_rate / 2.0])
    mel_f = _mel_to_hz(np.linspace(*_hz_to_mel(edges), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((n_mels, len(fft_freqs)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights.astype(np.float32)


# ------------------------------------------------------------ tensor mapping

_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")
_SIMPLE = {
    "encoder/position_encodings/encodings": "encoder.positional_embedding",
    "decoder/position_encodings/encodings": "decoder.positional_embedding",
    "decoder/embeddings/weight": "decoder.token_embedding.weight",
}
_NORMS = {"gamma": "weight", "beta": "bias"}
_BLOCK_PARTS = {
    "self_attention/layer_norm": "attn_ln",
    "self_attention/linear_1": "attn.out",
    "attention/layer_norm": "cross_attn_ln",
    "attention/linear_0": "cross_attn.query",
    "attention/linear_2": "cross_attn.out",
    "ffn/layer_norm": "mlp_ln",
    "ffn/linear_0": "mlp.0",
    "ffn/linear_1": "mlp.2",
}


def _split_stacked(
    prefix: str, kind: str, array: np.ndarray, heads: tuple[str, ...]
) -> Iterator[tuple[str, np.ndarray]]:
    parts = np.split(array, len(heads), axis=0)
    for head, part in zip(heads, parts, strict=True):
        # Whisper has no key bias; CTranslate2 stores zeros there.
        if kind == "bias" and head == "key":
            continue
        yield f"{prefix}.{head}.{kind}", part


def map_tensors(variables: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (whisper.cpp name, array) for every weight, in whisper.cpp's order."""
    for name in sorted(variables):
        array = variables[name]
        if array.ndim == 0 or name == "decoder/projection/weight":
            continue
        if name.endswith("_scale") or array.dtype.kind != "f":
            raise ConversionError(
                f"{name}: quantized CTranslate2 models (int8) are not supported; use a float16 or float32 model"
            )
        if name in _SIMPLE:
            yield _SIMPLE[name], array
            continue
        if m := re.match(r"^encoder/(conv[12])/(weight|bias)$", name):
            yield f"encoder.{m[1]}.{m[2]}", array
            continue
        if m := re.match(r"^(encoder|decoder)/layer_norm/(gamma|beta)$", name):
            target = "encoder.ln_post" if m[1] == "encoder" else "decoder.ln"
            yield f"{target}.{_NORMS[m[2]]}", array
            continue
        m = _LAYER.match(name)
        if not m:
            raise ConversionError(f"unexpected variable {name}")
        side, layer = m[1], m[2]
        rest = name[m.end() :]
        part, kind = rest.rsplit("/", 1)
        kind = _NORMS.get(kind, kind)
        prefix = f"{side}.blocks.{layer}"
        if part == "self_attention/linear_0":
            yield from _split_stacked(f"{prefix}.attn", kind, array, ("query", "key", "value"))
        elif part == "attention/linear_1":
            yield from _split_stacked(f"{prefix}.cross_attn", kind, array, ("key", "value"))
        elif part in _BLOCK_PARTS:
            yield f"{prefix}.{_BLOCK_PARTS[part]}.{kind}", array
        else:
            raise ConversionError(f"unexpected variable {name}")


def count_layers(variables: dict[str, np.ndarray], side: str) -> int:
    """Count ``<side>/layer_<n>/`` blocks (``layer_norm`` is not a block)."""
    layers = {int(m[2]) for name in variables if (m := _LAYER.match(name)) and m[1] == side}
    if layers != set(range(len(layers))):
        raise ConversionError(f"{side} layers are not numbered 0..n-1")
    return len(layers)


def hparams(model: Ct2Model, ftype: int) -> list[int]:
    """The eleven int32 hyper-parameters of the ggml header."""
    v = model.variables
    try:
        n_vocab, n_text_state = v["decoder/embeddings/weight"].shape
        n_audio_ctx, n_audio_state = v["encoder/position_encodings/encodings"].shape
        n_text_ctx = v["decoder/position_encodings/encodings"].shape[0]
        n_mels = v["encoder/conv1/weight"].shape[1]
        n_audio_head = int(v["encoder/num_heads"])
        n_text_head = int(v["decoder/num_heads"])
    except KeyError as exc:
        raise ConversionError(f"model.bin lacks {exc.args[0]}") from exc
    if len(model.vocabulary) != n_vocab:
        raise ConversionError(f"vocabulary has {len(model.vocabulary)} tokens, embeddings have {n_vocab}")
    return [
        n_vocab,
        n_audio_ctx,
        n_audio_state,
        n_audio_head,
        count_layers(v, "encoder"),
        n_text_ctx,
        n_text_state,
        n_text_head,
        count_layers(v, "decoder"),
        n_mels,
        ftype,
    ]


# ------------------------------------------------------------------- writing


def quantize_q8_0(array: np.ndarray) -> bytes:
    """Encode a 2-D float array as ggml q8_0 blocks (f16 scale + 32 int8 per block)."""
    blocks = np.asarray(array, dtype=np.float32).reshape(-1, QK8_0)
    amax = np.abs(blocks).max(axis=1)
    scale = amax / 127.0
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    quants = np.round(blocks * inverse[:, None]).astype(np.int8)
    out = np.empty(len(blocks), dtype=[("d", "<f2"), ("qs", "i1", QK8_0)])
    out["d"] = scale.astype(np.float16)
    out["qs"] = quants
    return out.tobytes()


def _tensor_payload(name: str, array: np.ndarray, quantize: bool) -> tuple[int, np.ndarray, bytes]:
    if name.startswith("encoder.conv") and name.endswith(".bias"):
        array = array.reshape(array.shape[0], 1)
    if array.ndim == 1 or name in F32_TENSORS:
        return GGML_F32, array, array.astype("<f4").tobytes()
    if quantize and array.ndim == 2 and array.shape[-1] % QK8_0 == 0:
        return GGML_Q8_0, array, quantize_q8_0(array)
    return GGML_F16, array, array.astype("<f2").tobytes()


def write_ggml(model: Ct2Model, out_path: Path, quantize: bool = False) -> Path:
    """Write ``model`` as a whisper.cpp ggml file, atomically (temp file, fsync, rename)."""
    out_path = Path(out_path)
    header = hparams(model, FTYPE_Q8_0 if quantize else FTYPE_F16)
    tokens = token_bytes(model.vocabulary)
    filters = mel_filters(header[9])
    with AtomicFile(out_path, mode=PUBLIC) as target, open(target.temp, "wb") as f:
        f.write(struct.pack("<i", GGML_MAGIC))
        f.write(struct.pack("<11i", *header))
        f.write(struct.pack("<ii", *filters.shape))
        f.write(filters.astype("<f4").tobytes())
        f.write(struct.pack("<i", len(tokens)))
        for token in tokens:
            f.write(struct.pack("<i", len(token)) + token)
        for name, array in map_tensors(model.variables):
            ttype, shaped, payload = _tensor_payload(name, array, quantize)
            encoded = name.encode()
            f.write(struct.pack("<iii", shaped.ndim, len(encoded), ttype))
            f.write(struct.pack(f"<{shaped.ndim}i", *reversed(shaped.shape)))
            f.write(encoded)
            f.write(payload)
    return out_path


def convert_ct2_dir(model_dir: Path, out_path: Path, quantize: bool = False) -> Path:
    """Convert a CTranslate2 Whisper directory into a ggml file."""
    return write_ggml(load_ct2_model(Path(model_dir)), out_path, quantize=quantize)


# ------------------------------------------------------------ ggml -> q8_0

_TYPE_SIZES = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_Q8_0: (QK8_0, 34)}


def _tensor_nbytes(ttype: int, count: int) -> int:
    if ttype not in _TYPE_SIZES:
        raise ConversionError(f"unsupported tensor type {ttype}")
    block, size = _TYPE_SIZES[ttype]
    return count // block * size


def _read_exact(f: BinaryIO, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise ConversionError("model file is truncated")
    return data


def _copy_header(src: BinaryIO, dst: BinaryIO, ftype: int) -> list[int]:
    magic, *params = _read(src, "<12i")
    if magic != GGML_MAGIC:
        raise ConversionError("not a whisper.cpp ggml model (bad magic)")
    if params[10] not in (0, FTYPE_F16):
        raise ConversionError("the model is already quantized")
    params[10] = ftype
    dst.write(struct.pack("<12i", magic, *params))
    n_mel, n_fft = _read(src, "<ii")
    dst.write(struct.pack("<ii", n_mel, n_fft) + _read_exact(src, 4 * n_mel * n_fft))
    (n_tokens,) = _read(src, "<i")
    dst.write(struct.pack("<i", n_tokens))
    for _ in range(n_tokens):
        (length,) = _read(src, "<i")
        dst.write(struct.pack("<i", length) + _read_exact(src, length))
    return params


def quantize_ggml(src_path: Path, dst_path: Path) -> Path:
    """Write a q8_0 copy of an f16 ggml model, tensor by tensor (atomically)."""
    dst_path = Path(dst_path)
    with open(src_path, "rb") as src, AtomicFile(dst_path, mode=PUBLIC) as target, open(target.temp, "wb") as dst:
        _copy_header(src, dst, FTYPE_Q8_0)
        while header := src.read(12):
            if len(header) != 12:
                raise ConversionError("model ends in the middle of a tensor header")
            ndim, name_len, ttype = struct.unpack("<iii", header)
            dims = _read(src, f"<{ndim}i")
            name = _read_exact(src, name_len).decode()
            count = int(np.prod(dims))
            data = _read_exact(src, _tensor_nbytes(ttype, count))
            if ndim == 2 and ttype in (GGML_F16, GGML_F32) and name not in F32_TENSORS and dims[0] % QK8_0 == 0:
                dtype = "<f2" if ttype == GGML_F16 else "<f4"
                array = np.frombuffer(data, dtype=dtype).reshape(tuple(reversed(dims)))
                ttype, data = GGML_Q8_0, quantize_q8_0(array)
            dst.write(struct.pack(f"<iii{ndim}i", ndim, name_len, ttype, *dims))
            dst.write(name.encode() + data)
    return dst_path
