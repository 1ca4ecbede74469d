"""The CTranslate2 -> ggml converter and q8_0 quantization, checked on a tiny synthetic model the test writes."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import MODELS_DIR
from workers.convert import (
    FTYPE_F16,
    FTYPE_Q8_0,
    GGML_F16,
    GGML_F32,
    GGML_MAGIC,
    GGML_Q8_0,
    QK8_0,
    ConversionError,
    convert_ct2_dir,
    count_layers,
    gpt2_byte_decoder,
    mel_filters,
    quantize_ggml,
    quantize_q8_0,
    read_ct2_model_bin,
    token_bytes,
)

# ------------------------------------------------------------ synthetic model

N_STATE = 64  # a multiple of 32, so every 2-D weight can be q8_0
N_AUDIO_HEAD, N_TEXT_HEAD = 2, 4  # different, so a swap shows in the header
N_AUDIO_CTX, N_TEXT_CTX = 6, 5
N_MELS = 80
ORDINARY_TOKENS = ["!", "hello", "Ġhello", "Ġworld", "ĊĠ", "Ã©t"]
ORDINARY_BYTES = [b"!", b"hello", b" hello", b" world", b"\n ", "ét".encode()]
# "Ġafter" comes after the first special token, so it must not be written.
VOCABULARY = [*ORDINARY_TOKENS, "<|endoftext|>", "<|startoftranscript|>", "Ġafter", "<|en|>", "<|transcribe|>"]
PROJECTION_ALIAS = ("decoder/projection/weight", "decoder/embeddings/weight")
CT2_DTYPE_IDS = {
    np.dtype(np.float32): 0,
    np.dtype(np.int8): 1,
    np.dtype(np.int16): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.float16): 4,
}
HPARAM_NAMES = (
    "n_vocab",
    "n_audio_ctx",
    "n_audio_state",
    "n_audio_head",
    "n_audio_layer",
    "n_text_ctx",
    "n_text_state",
    "n_text_head",
    "n_text_layer",
    "n_mels",
    "ftype",
)


def _stacked_bias(parts: int) -> np.ndarray:
    """A stacked bias whose part i is filled with i + 1, so each part of a split is recognisable."""
    return np.concatenate([np.full(N_STATE, i + 1, dtype=np.float16) for i in range(parts)])


def synthetic_variables(
    n_enc: int = 1, n_dec: int = 1, n_vocab: int = len(VOCABULARY), n_mels: int = N_MELS, seed: int = 0
) -> dict[str, np.ndarray]:
    """The variables of a tiny float16 CTranslate2 WhisperSpec, scalars included."""
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        """Random float16 weights."""
        return (rng.standard_normal(shape) * 0.5).astype(np.float16)

    def linear(prefix: str, rows: int, cols: int = N_STATE) -> None:
        """A weight and a bias."""
        v[f"{prefix}/weight"], v[f"{prefix}/bias"] = w(rows, cols), w(rows)

    def norm(prefix: str) -> None:
        """A layer norm's gamma and beta."""
        v[f"{prefix}/gamma"], v[f"{prefix}/beta"] = w(N_STATE), w(N_STATE)

    def ffn(prefix: str) -> None:
        """A feed-forward block: norm, up and down projections."""
        norm(f"{prefix}/ffn/layer_norm")
        linear(f"{prefix}/ffn/linear_0", 4 * N_STATE)
        linear(f"{prefix}/ffn/linear_1", N_STATE, 4 * N_STATE)

    v: dict[str, np.ndarray] = {
        "encoder/conv1/weight": w(N_STATE, n_mels, 3),
        "encoder/conv1/bias": w(N_STATE),
        "encoder/conv2/weight": w(N_STATE, N_STATE, 3),
        "encoder/conv2/bias": w(N_STATE),
        "encoder/position_encodings/encodings": w(N_AUDIO_CTX, N_STATE),
        "encoder/num_heads": np.array(N_AUDIO_HEAD, dtype=np.int16),
        "decoder/embeddings/weight": w(n_vocab, N_STATE),
        "decoder/position_encodings/encodings": w(N_TEXT_CTX, N_STATE),
        "decoder/num_heads": np.array(N_TEXT_HEAD, dtype=np.int16),
        # Flags real models carry; the converter must ignore scalars.
        "decoder/pre_norm": np.array(1, dtype=np.int8),
        "decoder/alignment_layer": np.array(-1, dtype=np.int16),
    }
    for i in range(n_enc):
        p = f"encoder/layer_{i}"
        norm(f"{p}/self_attention/layer_norm")
        linear(f"{p}/self_attention/linear_0", 3 * N_STATE)
        v[f"{p}/self_attention/linear_0/bias"] = _stacked_bias(3)
        linear(f"{p}/self_attention/linear_1", N_STATE)
        ffn(p)
    norm("encoder/layer_norm")
    for i in range(n_dec):
        p = f"decoder/layer_{i}"
        norm(f"{p}/self_attention/layer_norm")
        linear(f"{p}/self_attention/linear_0", 3 * N_STATE)
        v[f"{p}/self_attention/linear_0/bias"] = _stacked_bias(3)
        linear(f"{p}/self_attention/linear_1", N_STATE)
        norm(f"{p}/attention/layer_norm")
        linear(f"{p}/attention/linear_0", N_STATE)
        linear(f"{p}/attention/linear_1", 2 * N_STATE)
        v[f"{p}/attention/linear_1/bias"] = _stacked_bias(2)
        linear(f"{p}/attention/linear_2", N_STATE)
        ffn(p)
    norm("decoder/layer_norm")
    return v


def _ct2_string(text: str) -> bytes:
    """A CTranslate2 string: uint16 length counting the NUL, the UTF-8 bytes, the NUL."""
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_model_bin(
    variables: dict[str, np.ndarray],
    aliases: tuple[tuple[str, str], ...] = (PROJECTION_ALIAS,),
    version: int = 6,
    spec: str = "WhisperSpec",
    revision: int = 5,
) -> bytes:
    """Serialise variables and aliases as a CTranslate2 ``model.bin``."""
    out = bytearray(struct.pack("<I", version) + _ct2_string(spec) + struct.pack("<II", revision, len(variables)))
    for name, array in variables.items():
        array = np.asarray(array)  # tobytes() is C order; ascontiguousarray would make scalars 1-D
        out += _ct2_string(name) + struct.pack(f"<B{array.ndim}I", array.ndim, *array.shape)
        out += struct.pack("<BI", CT2_DTYPE_IDS[array.dtype], array.nbytes)
        out += array.astype(array.dtype.newbyteorder("<")).tobytes()
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases:
        out += _ct2_string(alias) + _ct2_string(target)
    return bytes(out)


def write_ct2_dir(
    directory: Path,
    variables: dict[str, np.ndarray] | None = None,
    vocabulary: list[str] | None = None,
    **model_bin: object,
) -> Path:
    """Write ``model.bin`` and ``vocabulary.txt`` of a synthetic CTranslate2 Whisper model into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    variables = synthetic_variables() if variables is None else variables
    (directory / "model.bin").write_bytes(ct2_model_bin(variables, **model_bin))
    tokens = VOCABULARY if vocabulary is None else vocabulary
    (directory / "vocabulary.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return directory


# ----------------------------------------------------------------- ggml reader

Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", QK8_0)])


@dataclass
class GgmlTensor:
    """One tensor record as stored: type, dims innermost first, raw data."""

    ttype: int
    dims: tuple[int, ...]
    data: bytes

    @property
    def shape(self) -> tuple[int, ...]:
        """The numpy shape (the stored dims reversed)."""
        return tuple(reversed(self.dims))

    def array(self) -> np.ndarray:
        """The values as float32, dequantizing q8_0 (d * q)."""
        if self.ttype == GGML_F32:
            flat = np.frombuffer(self.data, dtype="<f4")
        elif self.ttype == GGML_F16:
            flat = np.frombuffer(self.data, dtype="<f2").astype(np.float32)
        elif self.ttype == GGML_Q8_0:
            flat = dequantize_q8_0(self.data)
        else:
            raise AssertionError(f"unexpected tensor type {self.ttype}")
        return flat.reshape(self.shape)


@dataclass
class GgmlFile:
    """A parsed whisper.cpp legacy ggml file."""

    magic: int
    hparams: dict[str, int]
    mel: np.ndarray
    tokens: list[bytes]
    tensors: dict[str, GgmlTensor]


def dequantize_q8_0(data: bytes) -> np.ndarray:
    """Decode q8_0 blocks to a flat float32 array."""
    blocks = np.frombuffer(data, dtype=Q8_0_BLOCK)
    return (blocks["d"].astype(np.float32)[:, None] * blocks["qs"].astype(np.float32)).ravel()


def _tensor_nbytes(ttype: int, count: int) -> int:
    """Bytes of a tensor's data."""
    if ttype == GGML_Q8_0:
        assert count % QK8_0 == 0
        return count // QK8_0 * Q8_0_BLOCK.itemsize
    return count * {GGML_F32: 4, GGML_F16: 2}[ttype]


def read_ggml(path: Path) -> GgmlFile:
    """Parse a whole ggml file, asserting that it ends exactly after the last tensor."""
    buf = memoryview(Path(path).read_bytes())
    pos = 0

    def take(fmt: str) -> tuple:
        """Unpack ``fmt`` at the cursor."""
        nonlocal pos
        values = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return values

    def raw(n: int) -> bytes:
        """The next ``n`` bytes."""
        nonlocal pos
        assert pos + n <= len(buf), "file ends inside a record"
        pos += n
        return bytes(buf[pos - n : pos])

    (magic,) = take("<i")
    hparams = dict(zip(HPARAM_NAMES, take("<11i"), strict=True))
    n_mel, n_fft = take("<ii")
    mel = np.frombuffer(raw(4 * n_mel * n_fft), dtype="<f4").reshape(n_mel, n_fft)
    (n_tokens,) = take("<i")
    tokens = [raw(take("<i")[0]) for _ in range(n_tokens)]
    tensors: dict[str, GgmlTensor] = {}
    while pos < len(buf):
        ndim, name_len, ttype = take("<iii")
        dims = take(f"<{ndim}i")
        name = raw(name_len).decode()
        assert name not in tensors, f"{name} written twice"
        tensors[name] = GgmlTensor(ttype, dims, raw(_tensor_nbytes(ttype, int(np.prod(dims)))))
    return GgmlFile(magic, hparams, mel, tokens, tensors)


def expected_tensor_names(n_enc: int = 1, n_dec: int = 1) -> set[str]:
    """Every tensor name whisper.cpp loads for a model with these layer counts."""
    names = {
        "encoder.conv1.weight",
        "encoder.conv1.bias",
        "encoder.conv2.weight",
        "encoder.conv2.bias",
        "encoder.positional_embedding",
        "encoder.ln_post.weight",
        "encoder.ln_post.bias",
        "decoder.token_embedding.weight",
        "decoder.positional_embedding",
        "decoder.ln.weight",
        "decoder.ln.bias",
    }
    attn = [
        "attn_ln.weight",
        "attn_ln.bias",
        "attn.query.weight",
        "attn.query.bias",
        "attn.key.weight",
        "attn.value.weight",
        "attn.value.bias",
        "attn.out.weight",
        "attn.out.bias",
    ]
    mlp = ["mlp_ln.weight", "mlp_ln.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    cross = [f"cross_{n}" for n in attn]
    for i in range(n_enc):
        names |= {f"encoder.blocks.{i}.{n}" for n in attn + mlp}
    for i in range(n_dec):
        names |= {f"decoder.blocks.{i}.{n}" for n in attn + cross + mlp}
    return names


# -------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ct2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic CTranslate2 model directory (1 encoder and 1 decoder layer)."""
    return write_ct2_dir(tmp_path_factory.mktemp("ct2") / "model")


@pytest.fixture(scope="module")
def f16_path(ct2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic model converted to an f16 ggml file."""
    return convert_ct2_dir(ct2_dir, tmp_path_factory.mktemp("ggml") / "ggml-synthetic.bin")


@pytest.fixture(scope="module")
def f16(f16_path: Path) -> GgmlFile:
    """The parsed f16 conversion."""
    return read_ggml(f16_path)


@pytest.fixture(scope="module")
def q8_path(ct2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic model converted with quantize=True."""
    return convert_ct2_dir(ct2_dir, tmp_path_factory.mktemp("ggml") / "ggml-synthetic-q8_0.bin", quantize=True)


@pytest.fixture(scope="module")
def q8(q8_path: Path) -> GgmlFile:
    """The parsed q8_0 conversion."""
    return read_ggml(q8_path)


@pytest.fixture(scope="module")
def source() -> dict[str, np.ndarray]:
    """The variables the synthetic model was written from."""
    return synthetic_variables()


# ---------------------------------------------------------------------- header


def test_converter_writes_magic_and_eleven_hparams(f16: GgmlFile) -> None:
    assert f16.magic == GGML_MAGIC == 0x67676D6C
    assert f16.hparams == {
        "n_vocab": len(VOCABULARY),
        "n_audio_ctx": N_AUDIO_CTX,
        "n_audio_state": N_STATE,
        "n_audio_head": N_AUDIO_HEAD,
        "n_audio_layer": 1,
        "n_text_ctx": N_TEXT_CTX,
        "n_text_state": N_STATE,
        "n_text_head": N_TEXT_HEAD,
        "n_text_layer": 1,
        "n_mels": N_MELS,
        "ftype": FTYPE_F16,
    }
    assert FTYPE_F16 == 1


def test_quantized_conversion_sets_ftype_2007(q8: GgmlFile, f16: GgmlFile) -> None:
    assert q8.hparams["ftype"] == FTYPE_Q8_0 == 2007
    assert {k: v for k, v in q8.hparams.items() if k != "ftype"} == {
        k: v for k, v in f16.hparams.items() if k != "ftype"
    }


def test_converter_counts_layer_blocks_not_layer_norm(tmp_path: Path) -> None:
    variables = synthetic_variables(n_enc=2, n_dec=3)
    out = convert_ct2_dir(write_ct2_dir(tmp_path / "ct2", variables), tmp_path / "ggml-x.bin")
    model = read_ggml(out)
    assert (model.hparams["n_audio_layer"], model.hparams["n_text_layer"]) == (2, 3)
    assert set(model.tensors) == expected_tensor_names(2, 3)


def test_count_layers_rejects_gaps_in_layer_numbers() -> None:
    variables = synthetic_variables(n_enc=3)
    for name in [n for n in variables if n.startswith("encoder/layer_1/")]:
        del variables[name]
    with pytest.raises(ConversionError, match="numbered"):
        count_layers(variables, "encoder")


# ----------------------------------------------------------------- mel filters


def test_converter_writes_slaney_mel_filters_for_a_400_point_fft(f16: GgmlFile) -> None:
    mel = f16.mel
    assert mel.shape == (N_MELS, 201) and mel.dtype == np.float32
    assert np.isfinite(mel).all() and (mel >= 0).all()
    assert (mel.max(axis=1) > 0).all(), "every filter has a pass band"
    peaks = mel.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all(), "filters are ordered by frequency"
    # Slaney normalisation: each triangle has area 1 in Hz, so the sampled sum * 40 Hz is near 1.
    area = mel.sum(axis=1) * 8000 / 200
    assert np.allclose(area, 1.0, atol=0.1)
    # The first filter's value at 40 Hz in Whisper's own mel_filters.npz.
    assert mel[0, 0] == 0 and mel[0, 1] == pytest.approx(0.024862, abs=1e-5)
    np.testing.assert_array_equal(mel, mel_filters(N_MELS))


def test_converter_sizes_the_mel_block_from_conv1(tmp_path: Path) -> None:
    variables = synthetic_variables(n_mels=128)
    model = read_ggml(convert_ct2_dir(write_ct2_dir(tmp_path / "ct2", variables), tmp_path / "ggml-x.bin"))
    assert model.hparams["n_mels"] == 128
    assert model.mel.shape == (128, 201) and (model.mel >= 0).all()


# ------------------------------------------------------------------ vocabulary


def test_converter_writes_gpt2_decoded_tokens_before_the_first_special(f16: GgmlFile) -> None:
    assert f16.tokens == ORDINARY_BYTES
    assert b" hello" in f16.tokens and b"after" not in b"".join(f16.tokens)


def test_gpt2_byte_decoder_maps_256_symbols_to_every_byte() -> None:
    decoder = gpt2_byte_decoder()
    assert len(decoder) == 256 and sorted(decoder.values()) == list(range(256))
    assert decoder["Ġ"] == 0x20 and decoder["Ċ"] == 0x0A and decoder["!"] == 0x21 and decoder["Ā"] == 0


def test_token_bytes_rejects_text_that_is_not_byte_level() -> None:
    with pytest.raises(ConversionError, match="GPT-2"):
        token_bytes(["hello", "中"])


def test_converter_reads_vocabulary_json(tmp_path: Path) -> None:
    ct2 = write_ct2_dir(tmp_path / "ct2")
    (ct2 / "vocabulary.txt").unlink()
    (ct2 / "vocabulary.json").write_text(json.dumps(VOCABULARY), encoding="utf-8")
    assert read_ggml(convert_ct2_dir(ct2, tmp_path / "ggml-x.bin")).tokens == ORDINARY_BYTES


# --------------------------------------------------------------------- tensors


def test_converter_names_tensors_like_whisper_cpp(f16: GgmlFile) -> None:
    assert set(f16.tensors) == expected_tensor_names()
    assert not any("projection" in name or "key.bias" in name for name in f16.tensors)


@pytest.mark.parametrize(
    ("name", "ttype", "dims"),
    [
        ("encoder.conv1.weight", GGML_F16, (3, N_MELS, N_STATE)),
        ("encoder.conv2.weight", GGML_F16, (3, N_STATE, N_STATE)),
        ("encoder.conv1.bias", GGML_F32, (1, N_STATE)),
        ("encoder.conv2.bias", GGML_F32, (1, N_STATE)),
        ("encoder.positional_embedding", GGML_F32, (N_STATE, N_AUDIO_CTX)),
        ("decoder.positional_embedding", GGML_F32, (N_STATE, N_TEXT_CTX)),
        ("decoder.token_embedding.weight", GGML_F16, (N_STATE, len(VOCABULARY))),
        ("encoder.blocks.0.mlp.0.weight", GGML_F16, (N_STATE, 4 * N_STATE)),
        ("encoder.blocks.0.mlp.2.weight", GGML_F16, (4 * N_STATE, N_STATE)),
        ("encoder.blocks.0.mlp.0.bias", GGML_F32, (4 * N_STATE,)),
        ("encoder.blocks.0.attn_ln.weight", GGML_F32, (N_STATE,)),
        ("encoder.ln_post.bias", GGML_F32, (N_STATE,)),
        ("decoder.blocks.0.cross_attn.query.weight", GGML_F16, (N_STATE, N_STATE)),
        ("decoder.ln.weight", GGML_F32, (N_STATE,)),
    ],
)
def test_converter_reverses_dims_and_picks_types(f16: GgmlFile, name: str, ttype: int, dims: tuple[int, ...]) -> None:
    tensor = f16.tensors[name]
    assert (tensor.ttype, tensor.dims) == (ttype, dims)


def test_converter_keeps_1d_tensors_f32_and_2d_weights_f16(f16: GgmlFile) -> None:
    for name, tensor in f16.tensors.items():
        conv_bias = name.startswith("encoder.conv") and name.endswith(".bias")
        if len(tensor.dims) == 1 or conv_bias or name.endswith("positional_embedding"):
            assert tensor.ttype == GGML_F32, name
        else:
            assert tensor.ttype == GGML_F16, name


def test_converter_reshapes_conv_biases_to_columns(f16: GgmlFile, source: dict[str, np.ndarray]) -> None:
    for conv in ("conv1", "conv2"):
        tensor = f16.tensors[f"encoder.{conv}.bias"]
        assert tensor.shape == (N_STATE, 1)
        np.testing.assert_array_equal(tensor.array()[:, 0], source[f"encoder/{conv}/bias"].astype(np.float32))


def test_converter_copies_values_exactly_in_f16(f16: GgmlFile, source: dict[str, np.ndarray]) -> None:
    pairs = {
        "encoder.conv1.weight": "encoder/conv1/weight",
        "encoder.positional_embedding": "encoder/position_encodings/encodings",
        "decoder.token_embedding.weight": "decoder/embeddings/weight",
        "encoder.blocks.0.attn.out.weight": "encoder/layer_0/self_attention/linear_1/weight",
        "encoder.blocks.0.attn_ln.weight": "encoder/layer_0/self_attention/layer_norm/gamma",
        "encoder.blocks.0.attn_ln.bias": "encoder/layer_0/self_attention/layer_norm/beta",
        "encoder.blocks.0.mlp_ln.weight": "encoder/layer_0/ffn/layer_norm/gamma",
        "encoder.blocks.0.mlp.2.weight": "encoder/layer_0/ffn/linear_1/weight",
        "encoder.ln_post.weight": "encoder/layer_norm/gamma",
        "decoder.blocks.0.cross_attn_ln.bias": "decoder/layer_0/attention/layer_norm/beta",
        "decoder.blocks.0.cross_attn.query.weight": "decoder/layer_0/attention/linear_0/weight",
        "decoder.blocks.0.cross_attn.out.bias": "decoder/layer_0/attention/linear_2/bias",
        "decoder.ln.bias": "decoder/layer_norm/beta",
    }
    for ggml_name, ct2_name in pairs.items():
        np.testing.assert_array_equal(
            f16.tensors[ggml_name].array(), source[ct2_name].astype(np.float32), err_msg=ggml_name
        )


def test_converter_splits_stacked_qkv_without_key_bias(f16: GgmlFile, source: dict[str, np.ndarray]) -> None:
    for side in ("encoder", "decoder"):
        weight = source[f"{side}/layer_0/self_attention/linear_0/weight"].astype(np.float32)
        prefix = f"{side}.blocks.0.attn"
        for i, head in enumerate(("query", "key", "value")):
            part = f16.tensors[f"{prefix}.{head}.weight"]
            assert part.dims == (N_STATE, N_STATE)
            np.testing.assert_array_equal(part.array(), weight[i * N_STATE : (i + 1) * N_STATE])
        assert f"{prefix}.key.bias" not in f16.tensors
        # The stacked bias holds 1s for q, 2s for k and 3s for v.
        assert (f16.tensors[f"{prefix}.query.bias"].array() == 1).all()
        assert (f16.tensors[f"{prefix}.value.bias"].array() == 3).all()
        assert f16.tensors[f"{prefix}.value.bias"].dims == (N_STATE,)


def test_converter_splits_cross_attention_key_value_without_key_bias(
    f16: GgmlFile, source: dict[str, np.ndarray]
) -> None:
    weight = source["decoder/layer_0/attention/linear_1/weight"].astype(np.float32)
    prefix = "decoder.blocks.0.cross_attn"
    np.testing.assert_array_equal(f16.tensors[f"{prefix}.key.weight"].array(), weight[:N_STATE])
    np.testing.assert_array_equal(f16.tensors[f"{prefix}.value.weight"].array(), weight[N_STATE:])
    assert f"{prefix}.key.bias" not in f16.tensors
    assert (f16.tensors[f"{prefix}.value.bias"].array() == 2).all()
    np.testing.assert_array_equal(
        f16.tensors[f"{prefix}.query.bias"].array(),
        source["decoder/layer_0/attention/linear_0/bias"].astype(np.float32),
    )


def test_reader_resolves_the_projection_alias_to_the_embeddings(ct2_dir: Path) -> None:
    variables = read_ct2_model_bin(ct2_dir / "model.bin")
    np.testing.assert_array_equal(variables["decoder/projection/weight"], variables["decoder/embeddings/weight"])
    assert variables["encoder/num_heads"].dtype == np.int16 and int(variables["encoder/num_heads"]) == N_AUDIO_HEAD


def test_quantized_conversion_stores_2d_weights_as_q8_0(q8: GgmlFile, f16: GgmlFile) -> None:
    assert set(q8.tensors) == set(f16.tensors)
    for name, tensor in q8.tensors.items():
        plain = f16.tensors[name]
        assert tensor.dims == plain.dims, name
        if plain.ttype == GGML_F16 and len(plain.dims) == 2:
            assert tensor.ttype == GGML_Q8_0, name
            assert len(tensor.data) == np.prod(plain.dims) // 32 * 34
            values, reference = tensor.array(), plain.array()
            step = np.abs(reference).reshape(-1, 32).max(axis=1) / 127
            assert (np.abs(values - reference).reshape(-1, 32) <= 0.6 * step[:, None] + 1e-6).all(), name
        else:
            # f32 tensors and the 3-D conv weights are not quantized.
            assert (tensor.ttype, tensor.data) == (plain.ttype, plain.data), name


# ----------------------------------------------------------------- error paths


def test_converter_rejects_other_binary_versions(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="binary version 5"):
        convert_ct2_dir(write_ct2_dir(tmp_path / "ct2", version=5), tmp_path / "ggml-x.bin")
    assert not list(tmp_path.glob("ggml-x.bin*"))


def test_converter_rejects_other_specs(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="TransformerSpec"):
        convert_ct2_dir(write_ct2_dir(tmp_path / "ct2", spec="TransformerSpec"), tmp_path / "ggml-x.bin")


@pytest.mark.parametrize("keep", [2, 9, 40, 0.5, -3, -200])
def test_converter_rejects_truncated_model_bin(tmp_path: Path, keep: float) -> None:
    ct2 = write_ct2_dir(tmp_path / "ct2")
    data = (ct2 / "model.bin").read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    (ct2 / "model.bin").write_bytes(data[:cut])
    with pytest.raises(ConversionError):
        convert_ct2_dir(ct2, tmp_path / "ggml-x.bin")
    assert not list(tmp_path.glob("ggml-x.bin*"))


def test_converter_rejects_vocabulary_that_does_not_match_embeddings(tmp_path: Path) -> None:
    ct2 = write_ct2_dir(tmp_path / "ct2", vocabulary=VOCABULARY[:-1])
    with pytest.raises(ConversionError, match=rf"{len(VOCABULARY) - 1} tokens, embeddings have {len(VOCABULARY)}"):
        convert_ct2_dir(ct2, tmp_path / "ggml-x.bin")
    assert not list(tmp_path.glob("ggml-x.bin*")), "a failed conversion leaves no file behind"


def test_converter_rejects_byte_count_that_does_not_match_shape(tmp_path: Path) -> None:
    ct2 = write_ct2_dir(tmp_path / "ct2")
    data = bytearray((ct2 / "model.bin").read_bytes())
    name = _ct2_string("encoder/conv1/bias")
    at = data.index(name) + len(name) + 1 + 4 + 1  # ndim, one dim, dtype -> the byte count
    data[at : at + 4] = struct.pack("<I", N_STATE * 2 + 2)
    (ct2 / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ConversionError, match="encoder/conv1/bias"):
        convert_ct2_dir(ct2, tmp_path / "ggml-x.bin")


def test_converter_rejects_unknown_dtype(tmp_path: Path) -> None:
    ct2 = write_ct2_dir(tmp_path / "ct2")
    data = bytearray((ct2 / "model.bin").read_bytes())
    name = _ct2_string("encoder/conv1/bias")
    at = data.index(name) + len(name) + 1 + 4  # ndim, one dim -> the dtype
    assert data[at] == 4
    data[at] = 5  # bfloat16
    (ct2 / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ConversionError, match="unknown dtype 5"):
        convert_ct2_dir(ct2, tmp_path / "ggml-x.bin")


def test_converter_rejects_unexpected_variables(tmp_path: Path) -> None:
    variables = synthetic_variables()
    variables["encoder/layer_0/mystery/weight"] = np.zeros((N_STATE, N_STATE), dtype=np.float16)
    with pytest.raises(ConversionError, match="unexpected variable encoder/layer_0/mystery/weight"):
        convert_ct2_dir(write_ct2_dir(tmp_path / "ct2", variables), tmp_path / "ggml-x.bin")


def test_converter_rejects_a_model_without_head_counts(tmp_path: Path) -> None:
    variables = synthetic_variables()
    del variables["decoder/num_heads"]
    with pytest.raises(ConversionError, match="decoder/num_heads"):
        convert_ct2_dir(write_ct2_dir(tmp_path / "ct2", variables), tmp_path / "ggml-x.bin")


@pytest.mark.parametrize("missing", ["model.bin", "vocabulary.txt"])
def test_converter_rejects_directory_without_model_or_vocabulary(tmp_path: Path, missing: str) -> None:
    ct2 = write_ct2_dir(tmp_path / "ct2")
    (ct2 / missing).unlink()
    with pytest.raises(ConversionError, match=missing):
        convert_ct2_dir(ct2, tmp_path / "ggml-x.bin")


def test_converter_refuses_int8_quantized_ct2_weights(tmp_path: Path) -> None:
    variables = synthetic_variables()
    weight = variables["encoder/layer_0/ffn/linear_0/weight"].astype(np.float32)
    scale = (127 / np.abs(weight).max(axis=1)).astype(np.float32)
    variables["encoder/layer_0/ffn/linear_0/weight"] = np.round(weight * scale[:, None]).astype(np.int8)
    variables["encoder/layer_0/ffn/linear_0/weight_scale"] = scale
    with pytest.raises(ConversionError):
        convert_ct2_dir(write_ct2_dir(tmp_path / "ct2", variables), tmp_path / "ggml-x.bin")


# ------------------------------------------------------------------------ q8_0


def test_quantize_q8_0_round_trips_within_half_a_step() -> None:
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((8, 96)) * rng.uniform(0.01, 10, size=(8, 1))).astype(np.float32)
    data = quantize_q8_0(array)
    assert len(data) == array.size // 32 * 34
    restored = dequantize_q8_0(data).reshape(array.shape)
    step = np.abs(array).reshape(-1, 32).max(axis=1) / 127
    # Half a quantization step, plus the float16 rounding of the scale times |q| <= 127.
    error = np.abs(restored - array).reshape(-1, 32)
    assert (error <= step[:, None] * (0.5 + 127 * 2.0**-11) + 1e-7).all()


def test_quantize_q8_0_lays_out_34_byte_blocks_of_scale_and_int8() -> None:
    row = np.linspace(-2.54, 1.0, 32, dtype=np.float32)
    data = quantize_q8_0(np.stack([row, row * 0.5]))
    assert len(data) == 2 * 34
    (d,) = struct.unpack_from("<e", data, 0)
    assert d == pytest.approx(2.54 / 127, rel=1e-3)
    quants = np.frombuffer(data[2:34], dtype=np.int8)
    assert quants[0] == -127 and quants[-1] == round(1.0 / (2.54 / 127))
    (d2,) = struct.unpack_from("<e", data, 34)
    assert d2 == pytest.approx(d / 2, rel=1e-3)


def test_quantize_q8_0_encodes_a_zero_block_as_zeros() -> None:
    data = quantize_q8_0(np.zeros((1, 32), dtype=np.float32))
    assert data == bytes(34)


def test_quantize_ggml_matches_quantized_conversion(f16_path: Path, q8_path: Path, tmp_path: Path) -> None:
    out = quantize_ggml(f16_path, tmp_path / "ggml-synthetic-q8_0.bin")
    assert out.read_bytes() == q8_path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_quantize_ggml_refuses_an_already_quantized_file(q8_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="already quantized"):
        quantize_ggml(q8_path, tmp_path / "ggml-again.bin")
    assert not list(tmp_path.iterdir())


def test_quantize_ggml_refuses_a_file_without_the_ggml_magic(tmp_path: Path) -> None:
    src = tmp_path / "ggml-bad.bin"
    src.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(ConversionError, match="magic"):
        quantize_ggml(src, tmp_path / "ggml-bad-q8_0.bin")
    assert [p.name for p in tmp_path.iterdir()] == [src.name]


def test_quantize_ggml_rejects_a_truncated_source(f16_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "ggml-cut.bin"
    src.write_bytes(f16_path.read_bytes()[:-10])
    with pytest.raises(ConversionError):
        quantize_ggml(src, tmp_path / "ggml-cut-q8_0.bin")


# ------------------------------------------------------------------ real model

REAL_TINY_EN = MODELS_DIR / "ggml-tiny.en.bin"


@pytest.mark.skipif(not REAL_TINY_EN.exists(), reason=f"{REAL_TINY_EN} is not installed")
def test_installed_tiny_en_has_tiny_en_size_and_hparams() -> None:
    assert REAL_TINY_EN.stat().st_size / 1e6 == pytest.approx(77.7, abs=0.1)
    model = read_ggml(REAL_TINY_EN)
    assert model.magic == GGML_MAGIC
    assert model.hparams == {
        "n_vocab": 51864,
        "n_audio_ctx": 1500,
        "n_audio_state": 384,
        "n_audio_head": 6,
        "n_audio_layer": 4,
        "n_text_ctx": 448,
        "n_text_state": 384,
        "n_text_head": 6,
        "n_text_layer": 4,
        "n_mels": 80,
        "ftype": 1,
    }
    assert model.mel.shape == (80, 201)
    assert len(model.tokens) == 50256 and model.tokens[:3] == [b"!", b'"', b"#"]
    assert set(model.tensors) == expected_tensor_names(4, 4)
    assert model.tensors["decoder.token_embedding.weight"].dims == (384, 51864)
