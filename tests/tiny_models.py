"""Builders for tiny, seeded ONNX models so runtime tests need no downloaded weights.

``build_tiny_genai_model`` writes a folder that onnxruntime-genai loads as a ``llama`` decoder:
``model.onnx`` (embedding + learned positions -> attention layers over a KV cache -> LM head),
``genai_config.json`` and a byte-level BPE ``tokenizer.json`` trained on a small corpus.
``reference_logits`` recomputes the same graph in plain numpy without any cache, so tests can
check what the runtime generated against an independent forward pass.

``build_tiny_classifier`` writes a small float32 convolutional image classifier.
"""

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # old enough for every onnxruntime the agents ship with

# Special tokens of the tiny tokenizer; ids are their positions here.
SPECIAL_TOKENS = ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>")
EOS_TOKEN_ID = 0

# The chat template shipped in tokenizer_config.json (a Jinja template, like real models).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_CORPUS = (
    "hello world, the quick brown fox jumps over the lazy dog.",
    "edge devices run small models next to the sensors they read.",
    "a controller keeps a fleet of agents healthy and up to date.",
    "temperature 21.5 degrees, humidity 40 percent, all systems nominal.",
    "Is the conveyor belt moving? Yes, at 1.2 metres per second.",
)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _train_tokenizer(folder: Path, vocab_size: int) -> int:
    """Train a byte-level BPE tokenizer on the fixed corpus; returns its real vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(_CORPUS) * 4, trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == i, "special tokens must come first"
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": SPECIAL_TOKENS[EOS_TOKEN_ID],
        "eos_token": SPECIAL_TOKENS[EOS_TOKEN_ID],
        "pad_token": SPECIAL_TOKENS[EOS_TOKEN_ID],
        "unk_token": SPECIAL_TOKENS[EOS_TOKEN_ID],
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")})
    )
    return int(tokenizer.get_vocab_size())


def build_tiny_genai_model(
    folder: Path,
    *,
    vocab_size: int = 320,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    context_length: int = 128,
    seed: int = 0,
) -> Path:
    """Write a tiny llama-type decoder folder for onnxruntime-genai and return the folder.

    The KV cache tensors are ``[batch, heads, sequence, head_size]``; ``present`` is ``past``
    concatenated with the new keys/values, so ``past_present_share_buffer`` is false.
    ``vocab_size`` is the target for BPE training; the model uses the trained tokenizer's size.
    """
    if hidden % heads:
        raise ValueError("hidden must be a multiple of heads")
    if not 1 <= layers <= 4:
        raise ValueError("layers must be 1..4")
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _train_tokenizer(folder, vocab_size)
    head_size = hidden // heads
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int, scale: float = 1.0) -> onnx.TensorProto:
        fan_in = shape[0]
        value = rng.standard_normal(shape) * (scale / np.sqrt(fan_in))
        return numpy_helper.from_array(value.astype(np.float32), name)

    inits = [
        weight("embed", vocab, hidden, scale=float(np.sqrt(vocab))),
        weight("pos_embed", context_length, hidden, scale=float(np.sqrt(context_length))),
        weight("lm_head", hidden, vocab, scale=4.0),
        numpy_helper.from_array(np.array([0, 0, heads, head_size], np.int64), "heads_shape"),
        numpy_helper.from_array(np.array([0, 0, hidden], np.int64), "hidden_shape"),
        numpy_helper.from_array(np.array(1.0 / np.sqrt(head_size), np.float32), "attn_scale"),
        numpy_helper.from_array(np.array(-1e9, np.float32), "neg_inf"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes_12"),
        numpy_helper.from_array(np.array([1], np.int64), "axes_1"),
        numpy_helper.from_array(np.array([2], np.int64), "axes_2"),
    ]
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["tok_emb"]),
        helper.make_node("Gather", ["pos_embed", "position_ids"], ["pos_emb"]),
        helper.make_node("Add", ["tok_emb", "pos_emb"], ["x_0"]),
        # Mask: key position j is visible to a query at position p when j <= p and mask[j] == 1.
        helper.make_node("Shape", ["attention_mask"], ["total_len_1d"], start=1, end=2),
        helper.make_node("Squeeze", ["total_len_1d"], ["total_len"]),
        helper.make_node("Range", ["zero", "total_len", "one"], ["key_pos"]),
        helper.make_node("Unsqueeze", ["position_ids", "axes_2"], ["query_pos"]),
        helper.make_node("LessOrEqual", ["key_pos", "query_pos"], ["causal"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_bool"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["mask_bool", "axes_1"], ["mask_b1t"]),
        helper.make_node("And", ["causal", "mask_b1t"], ["allowed_bst"]),
        helper.make_node("Unsqueeze", ["allowed_bst", "axes_1"], ["allowed"]),
    ]
    kv_shape = ["batch_size", heads, "past_sequence_length", head_size]
    present_shape = ["batch_size", heads, "total_sequence_length", head_size]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "seq"]),
        helper.make_tensor_value_info(
            "attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]
        ),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "seq"]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "seq", vocab])
    ]
    for i in range(layers):
        x, p = f"x_{i}", f"l{i}_"
        for w in ("wq", "wk", "wv", "wo"):
            inits.append(weight(p + w, hidden, hidden))
        inits.append(weight(p + "w1", hidden, 2 * hidden))
        inits.append(weight(p + "w2", 2 * hidden, hidden))
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape
                )
            )
            outputs.append(
                helper.make_tensor_value_info(
                    f"present.{i}.{kind}", TensorProto.FLOAT, present_shape
                )
            )
        for w in ("q", "k", "v"):
            nodes += [
                helper.make_node("MatMul", [x, p + "w" + w], [p + w + "_flat"]),
                helper.make_node("Reshape", [p + w + "_flat", "heads_shape"], [p + w + "_bshd"]),
                helper.make_node("Transpose", [p + w + "_bshd"], [p + w], perm=[0, 2, 1, 3]),
            ]
        nodes += [
            helper.make_node(
                "Concat", [f"past_key_values.{i}.key", p + "k"], [f"present.{i}.key"], axis=2
            ),
            helper.make_node(
                "Concat", [f"past_key_values.{i}.value", p + "v"], [f"present.{i}.value"], axis=2
            ),
            helper.make_node("Transpose", [f"present.{i}.key"], [p + "kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", [p + "q", p + "kt"], [p + "raw_scores"]),
            helper.make_node("Mul", [p + "raw_scores", "attn_scale"], [p + "scaled"]),
            helper.make_node("Where", ["allowed", p + "scaled", "neg_inf"], [p + "masked"]),
            helper.make_node("Softmax", [p + "masked"], [p + "probs"], axis=-1),
            helper.make_node("MatMul", [p + "probs", f"present.{i}.value"], [p + "ctx"]),
            helper.make_node("Transpose", [p + "ctx"], [p + "ctx_bshd"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [p + "ctx_bshd", "hidden_shape"], [p + "ctx_flat"]),
            helper.make_node("MatMul", [p + "ctx_flat", p + "wo"], [p + "attn_out"]),
            helper.make_node("Add", [x, p + "attn_out"], [p + "mid"]),
            helper.make_node("MatMul", [p + "mid", p + "w1"], [p + "up"]),
            helper.make_node("Tanh", [p + "up"], [p + "act"]),
            helper.make_node("MatMul", [p + "act", p + "w2"], [p + "down"]),
            helper.make_node("Add", [p + "mid", p + "down"], [f"x_{i + 1}"]),
        ]
    nodes.append(helper.make_node("MatMul", [f"x_{layers}", "lm_head"], ["logits"]))
    graph = helper.make_graph(nodes, "tiny_llama", inputs, outputs, initializer=inits)
    onnx.save(_model(graph), str(folder / "model.onnx"))

    genai_config = {
        "model": {
            "type": "llama",
            "bos_token_id": EOS_TOKEN_ID,
            "eos_token_id": EOS_TOKEN_ID,
            "pad_token_id": EOS_TOKEN_ID,
            "vocab_size": vocab,
            "context_length": context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": head_size,
                "hidden_size": hidden,
                "num_attention_heads": heads,
                "num_key_value_heads": heads,
                "num_hidden_layers": layers,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": context_length,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }
    (folder / "genai_config.json").write_text(json.dumps(genai_config, indent=2))
    return folder


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_logits(folder: Path, token_ids: list[int]) -> np.ndarray:
    """Logits ``[len(token_ids), vocab]`` of the tiny decoder, computed in numpy with no cache."""
    model = onnx.load(str(folder / "model.onnx"))
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    config = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    heads, head_size = config["num_attention_heads"], config["head_size"]
    n = len(token_ids)
    x = w["embed"][token_ids] + w["pos_embed"][np.arange(n)]
    causal = np.tril(np.ones((n, n), dtype=bool))
    for i in range(config["num_hidden_layers"]):
        p = f"l{i}_"

        def split(y: np.ndarray) -> np.ndarray:
            return y.reshape(n, heads, head_size).transpose(1, 0, 2)

        q, k, v = (split(x @ w[p + name]) for name in ("wq", "wk", "wv"))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_size)
        scores = np.where(causal, scores, -1e9)
        ctx = (_softmax(scores) @ v).transpose(1, 0, 2).reshape(n, heads * head_size)
        mid = x + ctx @ w[p + "wo"]
        x = mid + np.tanh(mid @ w[p + "w1"]) @ w[p + "w2"]
    return np.asarray(x @ w["lm_head"])


def reference_greedy(folder: Path, prompt_ids: list[int], max_new: int) -> list[int]:
    """Greedy continuation of ``prompt_ids`` by full recomputation; stops after EOS."""
    ids = list(prompt_ids)
    out: list[int] = []
    for _ in range(max_new):
        nxt = int(np.argmax(reference_logits(folder, ids)[-1]))
        if nxt == EOS_TOKEN_ID:
            break
        out.append(nxt)
        ids.append(nxt)
    return out


def build_tiny_classifier(
    path: Path,
    *,
    input_shape: tuple[int, ...] = (1, 3, 8, 8),
    classes: int = 4,
    channels: int = 16,
    seed: int = 0,
) -> Path:
    """Write a float32 image classifier and return ``path``.

    Conv 3x3 -> Relu -> MaxPool 2x2 -> Conv 3x3 -> Relu -> Flatten -> MatMul + Add -> logits.
    ``input_shape`` is ``(batch, channels, height, width)`` with even height and width; the
    batch is fixed as given.
    """
    if len(input_shape) != 4 or input_shape[2] % 2 or input_shape[3] % 2:
        raise ValueError("input_shape must be (batch, channels, even height, even width)")
    rng = np.random.default_rng(seed)
    batch, in_ch, height, width = input_shape
    features = channels * (height // 2) * (width // 2)

    def weight(name: str, *shape: int, fan_in: int) -> onnx.TensorProto:
        value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        return numpy_helper.from_array(value.astype(np.float32), name)

    # ReLU features are all positive; centring each feature's class weights keeps one class from
    # winning every input, so seeded inputs spread over the classes.
    fc_w = rng.standard_normal((features, classes)) * np.sqrt(2.0 / features)
    fc_w -= fc_w.mean(axis=1, keepdims=True)
    inits = [
        weight("conv1_w", channels, in_ch, 3, 3, fan_in=in_ch * 9),
        weight("conv1_b", channels, fan_in=50),
        weight("conv2_w", channels, channels, 3, 3, fan_in=channels * 9),
        weight("conv2_b", channels, fan_in=50),
        numpy_helper.from_array(fc_w.astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1_w", "conv1_b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2_w", "conv2_b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc_w"], ["scores"]),
        helper.make_node("Add", ["scores", "fc_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        initializer=inits,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(_model(graph), str(path))
    return path
