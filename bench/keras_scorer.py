"""Class scores computed by keras-hub alone, as a Keras user would (a script that the export
tests and bench/export_roundtrip.py run in a fresh process, so nothing of our model is in memory).

    python bench/keras_scorer.py SPEC.json   ->  prints {"task": ..., "probs": [[...], ...]}

SPEC: {"preset": dir, "task": "Gemma3CausalLM" | "GemmaCausalLM" | "Gemma4CausalLM", "lora": .lora.h5 or null,
"rank": int, "target_layer_names": [...], "head": str, "tail": str, "texts": [...],
"class_words": [...]}. Each prompt is bos + tokens(head) + tokens(text) + tokens(tail),
the pieces tokenised apart as the classifier does; the score of a text is the softmax
over the class words' logits at its last position (one right-padded batch).
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    lm = getattr(keras_hub.models, spec["task"]).from_preset(spec["preset"])
    backbone = lm.backbone
    if spec.get("lora"):
        backbone.enable_lora(spec["rank"], target_layer_names=spec["target_layer_names"])
        backbone.load_lora_weights(spec["lora"])
    tok = lm.preprocessor.tokenizer

    def ids(s: str) -> list[int]:
        return [int(i) for i in keras.ops.convert_to_numpy(tok(s)).tolist()] if s else []

    class_ids = [tok.token_to_id(w) for w in spec["class_words"]]
    prompt_ids = [[tok.token_to_id("<bos>")] + ids(spec["head"]) + ids(text) + ids(spec["tail"])
                  for text in spec["texts"]]
    # One right-padded batch: causal attention keeps each row's real positions blind to
    # the padding after them, so row i's score is read at its own last token.
    lengths = np.array([len(x) for x in prompt_ids])
    tokens = np.zeros((len(prompt_ids), lengths.max()), np.int32)
    for i, x in enumerate(prompt_ids):
        tokens[i, : len(x)] = x
    mask = (np.arange(lengths.max())[None, :] < lengths[:, None]).astype(np.int32)
    inputs = {"token_ids": tokens, "padding_mask": mask}
    if "position_ids" in backbone.input:  # Gemma 4 takes its positions as an input
        inputs["position_ids"] = np.ascontiguousarray(np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32),
                                                                      tokens.shape))
    hidden = backbone(inputs)
    last = keras.ops.convert_to_numpy(hidden)[np.arange(len(lengths)), lengths - 1][:, None, :]
    logits = np.asarray(keras.ops.convert_to_numpy(backbone.token_embedding(last, reverse=True)),
                        np.float64)[:, 0, class_ids]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True)).tolist()
    print(json.dumps({"task": type(lm).__name__, "backbone": type(backbone).__name__, "probs": probs,
                      "prompt_ids": prompt_ids}))


if __name__ == "__main__":
    main()
