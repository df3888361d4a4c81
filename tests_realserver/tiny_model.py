"""
A tiny llama model with random weights, written as GGUF with the ``gguf``
package: no download, a second to make.

Two layers, a 64-wide embedding, and a real SentencePiece-style vocabulary
that llama.cpp tokenizes like any other: the 256 byte-fallback tokens, single
characters, and every prefix of each word the benchmark prompts use (SPM
merges adjacent pieces by score, so a word becomes one token only when every
step on the way is a piece too). A chat template sits in the metadata, so the
server's chat endpoint formats messages without being told how.

Random weights make gibberish, which is all a proxy test needs: tokens, at a
model's pace, deterministic at temperature 0. The output projection is scaled
so that the tokens whose rows are zero are practically never sampled: the
end-of-sequence token, so every request runs to its ``max_tokens``, and the
byte pieces, so every token is text of its own and every request of a shape
costs the server the same.
"""

from __future__ import annotations

import string

import gguf  # type: ignore[import-not-found]
import numpy as np

from vespa.benchmarks.prompts import _WORDS, INSTRUCTION

#: The template llama-cpp-python renders chat messages with (Jinja2).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

EMBEDDING = 64
HEADS = 4
FEED_FORWARD = 128
LAYERS = 2
CONTEXT = 4096


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """The pieces, their scores and their types, in token-id order."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces: list[str] = []
    seen = set(tokens)

    def add(piece: str) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)

    for char in "\u2581" + string.ascii_letters + string.digits + string.punctuation + "\n":
        add(char)
    words = [w.strip(string.punctuation) for w in INSTRUCTION.split()] + list(_WORDS)
    words += ["user", "assistant", "system", "|>", "<|"]
    for word in words:
        for piece in ("\u2581" + word, word):
            for end in range(2, len(piece) + 1):
                add(piece[:end])
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # Longer pieces win: SPM merges the pair whose piece scores highest.
    scores = [0.0] * (3 + 256) + [float(len(p)) for p in pieces]
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(path: str, seed: int = 0) -> None:
    """
    Write the model to ``path``.

    :param seed: the weights' random seed (the same seed, the same model).
    """
    tokens, scores, types = vocabulary()
    vocab = len(tokens)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("vespa-tiny-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBEDDING)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(EMBEDDING // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def weights(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer.add_tensor("token_embd.weight", weights(vocab, EMBEDDING, scale=1.0))
    writer.add_tensor("output_norm.weight", np.ones(EMBEDDING, dtype=np.float32))
    output = weights(vocab, EMBEDDING, scale=1.5)
    # <unk>, <s>, </s> and the 256 byte-fallback pieces: never the likeliest
    # by far, so never sampled. A byte sampled alone can be half a UTF-8
    # character that never completes: llama-cpp-python then holds back the
    # rest of the stream and re-decodes every held token at each step, which
    # made a request's cost depend on where such a byte fell (up to 3 times).
    output[: 3 + 256] = 0.0
    writer.add_tensor("output.weight", output)
    for layer in range(LAYERS):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(EMBEDDING, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{block}.{name}.weight", weights(EMBEDDING, EMBEDDING))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(EMBEDDING, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", weights(FEED_FORWARD, EMBEDDING))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(FEED_FORWARD, EMBEDDING))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(EMBEDDING, FEED_FORWARD))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
