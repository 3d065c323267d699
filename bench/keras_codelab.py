"""The "agile classifiers" codelab, reproduced with keras-hub on our Gemma 3 270M weights.

This is the baseline a comparison benchmark measures the toolkit against. It
follows Google's codelab ("Introduction to agile safety classifiers with
Gemma"; the Japanese and Indonesian copies in shared/seeds/000_*, 001_*) line
for line, on keras-hub's Gemma3CausalLM instead of GemmaCausalLM
("gemma_instruct_2b_en"), loaded with the same real pretrained weights our own
model uses (`load_pretrained("gemma3_270m")`, fp32), so scores can be compared.

Public functions (all usable in one process, next to our JAX model):

    build_codelab_model(model_name="gemma3_270m", *, sequence_length=128,
                        lora_rank=4, learning_rate=5e-4, seed=1234)
        -> (causal_lm, keras_tokenizer)
    train_speed(lm, texts, labels, *, batch_size=2, steps=10, warmup_steps=2) -> dict
    score_speed(lm, tokenizer, texts, *, n=20, labels=CLASS_LABELS, jit=False) -> dict
    compute_output_probability(model, prompt, target_classes, *, score_fn=None)
        -> {class: prob}                                                        (the codelab's)
    preprocess_text(text, labels, instructions, separator) -> str                (the codelab's)
    AgileClassifier, CODELAB_CLASSIFIER                                         (the codelab's)
    load_ethos() -> (df_train, df_test)                                         (the codelab's split)

The codelab's choices that are pitfalls on Gemma 3 -- reproduced on purpose,
this is the baseline:

* `<separator>` is not a Gemma 3 token. It is plain text, tokenised as
  `<`, `separator`, `>` (after `]` the first two merge into `]<`); the keras
  tokenizer's `token_to_id('<separator>')` answers 3, the `<unk>` id.
* The classifier's separator is `'<separator>'` with NO newlines (the
  codelab's section 5 demo passes `'\\n<separator>\\n'`, but `AgileClassifier`
  -- what is trained and scored -- uses `separator_token='<separator>'`).
* The training string ends with a literal `'<eos>'`. keras-hub's
  SentencePiece tokenizer does not match special tokens in text, so it becomes
  `<`, `eos`, `>` (three ordinary tokens the model is taught to emit); the
  real end token (id 1) is appended by the preprocessor after it.
  (Our `toolkit` Tokenizer *does* map a literal `<eos>` to id 1.)
* Loss is over every token of the whole string (instructions, the text, the
  label, `<eos>` pieces and the end token), not just the label.
* sequence_length=128 truncates from the end: a long text pushes the label
  (training) or `Prediction:` (scoring) out of the window, and the score is
  then read after some word of the text. Both are counted in the results.
* Scoring runs one example at a time through a full forward pass over all 128
  padded positions and the full 262k-wide vocabulary projection, to read two
  logits at one position.

keras-hub quirks met here (keras-hub 0.32, keras 3.15, JAX backend):

* `Gemma3CausalLMPreprocessor.__call__` only takes `{"prompts", "responses"}`
  dicts (plain strings raise TypeError); the older GemmaCausalLMPreprocessor
  the codelab used took plain strings and weighted every non-pad token. With
  `prompts=""` and `responses=<training string>` the Gemma 3 packer gives
  exactly that: `<bos>` + string + `<eos>`, every target after `<bos>` weighted.
* `Gemma3CausalLM` has no `score()` (GemmaCausalLM's is an eager forward:
  embedding, blocks, final norm, reversed embedding). `_score` does the same
  with the backbone, eagerly, as the codelab's call does.
* Under JAX, arrays have no `.numpy()` (the codelab's last line); we use
  `keras.ops.convert_to_numpy`.
* `Gemma3Tokenizer(proto=...)` takes our tokenizer's serialized SentencePiece
  proto (`Tokenizer.serialized_proto()`); the GGUF vocabulary has all the
  special pieces it checks for (<bos>, <eos>, <pad>, and also <img>,
  <start_of_image>, <end_of_image>); we pass `has_vision_tokens=False`
  because the model is text-only.

Run: `python bench/keras_codelab.py [--steps N] [--warmup-steps N] [--batch-size N] [--score-n N] [--score-jit]`
prints one JSON object (train speed, score speed, environment).
"""

from __future__ import annotations

import os
import sys

# keras reads its backend once, at first import.
if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses
import itertools
import json
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402

if keras.config.backend() != "jax":
    raise RuntimeError(
        f"bench.keras_codelab needs the JAX backend, but keras was already imported with "
        f"{keras.config.backend()!r}; set KERAS_BACKEND=jax before importing keras"
    )

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run by path: make `toolkit` importable
    sys.path.insert(0, str(REPO_ROOT))

ETHOS_DIR: Path | None = None  # None: $AGILE_TOOLKIT_DATA/ethos, else the cache, else a download
SEQUENCE_LENGTH = 128
CLASS_LABELS = ("Positive", "Negative")  # the codelab's labels; index = the `hateful` value


# ---------------------------------------------------------------------------
# The codelab's code (section 5-7), kept as written except where noted.


def preprocess_text(
    text: str,
    labels: Sequence[str],
    instructions: str,
    separator: str,
) -> str:
    prompt = f'{instructions}:[{",".join(labels)}]'
    return separator.join([prompt, f'Text:{text}', 'Prediction:'])


def _score(model: keras_hub.models.Gemma3CausalLM, token_ids, padding_mask):
    """GemmaCausalLM.score(..., scoring_mode="logits") for Gemma 3, which lacks it.

    Same computation as keras-hub's GemmaCausalLM.score: an eager forward of
    the backbone and the tied reversed embedding, logits at every position.
    """
    hidden = model.backbone({"token_ids": token_ids, "padding_mask": padding_mask})
    return model.backbone.token_embedding(hidden, reverse=True)


def _jit_score(model, token_ids, padding_mask):
    """The same logits as `_score`, from one jitted stateless forward (not the codelab's; for comparison)."""
    import jax

    fn = model.__dict__.get("_codelab_jit_forward")
    if fn is None:
        fn = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x)[0])
        model.__dict__["_codelab_jit_forward"] = fn
    return fn([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
              {"token_ids": token_ids, "padding_mask": padding_mask})


def compute_output_probability(
    model: keras_hub.models.Gemma3CausalLM,
    prompt: str,
    target_classes: Sequence[str],
    *,
    score_fn=None,  # not in the codelab: _score (default, eager, as the codelab) or _jit_score
) -> dict[str, float]:
    # Shorthands.
    preprocessor = model.preprocessor
    tokenizer = preprocessor.tokenizer

    # NOTE: If a token is not found, it will be considered same as "<unk>".
    token_unk = tokenizer.token_to_id('<unk>')

    # Identify the token indices, which is the same as the ID for this tokenizer.
    token_ids = [tokenizer.token_to_id(word) for word in target_classes]

    # Throw an error if one of the classes maps to a token outside the vocabulary.
    if any(token_id == token_unk for token_id in token_ids):
        raise ValueError('One of the target classes is not in the vocabulary.')

    # Preprocess the prompt in a single batch. This is done one sample at a time
    # for illustration purposes, but it would be more efficient to batch prompts.
    preprocessed = model.preprocessor.generate_preprocess([prompt])

    # Identify output token offset.
    padding_mask = preprocessed["padding_mask"]
    token_offset = keras.ops.sum(padding_mask) - 1

    # Score outputs, extract only the next token's logits.
    # (codelab: model.score(...); Gemma3CausalLM has none, see _score)
    vocab_logits = (score_fn or _score)(
        model,
        token_ids=preprocessed["token_ids"],
        padding_mask=padding_mask,
    )[0][token_offset]

    # Compute the relative probability of each of the requested tokens.
    token_logits = [vocab_logits[ix] for ix in token_ids]
    logits_tensor = keras.ops.convert_to_tensor(token_logits)
    probabilities = keras.activations.softmax(logits_tensor)

    # (codelab: probabilities.numpy(); JAX arrays have no .numpy())
    return dict(zip(target_classes, keras.ops.convert_to_numpy(probabilities)))


@dataclasses.dataclass(frozen=True)
class AgileClassifier:
    """Agile classifier to be wrapped around a LLM."""

    # The classes whose probability will be predicted.
    labels: tuple[str, ...]

    # Provide default instructions and control tokens, can be overridden by user.
    instructions: str = 'Classify the following text into one of the following classes'
    # PITFALL on Gemma 3: not a vocabulary token; plain text `<`, `separator`, `>`.
    separator_token: str = '<separator>'
    # PITFALL: typed in text this is `<`, `eos`, `>` for keras-hub, not the end token (id 1).
    end_of_text_token: str = '<eos>'

    def encode_for_prediction(self, x_text: str) -> str:
        return preprocess_text(
            text=x_text,
            labels=self.labels,
            instructions=self.instructions,
            separator=self.separator_token,
        )

    def encode_for_training(self, x_text: str, y: int) -> str:
        return ''.join([
            self.encode_for_prediction(x_text),
            self.labels[y],
            self.end_of_text_token,
        ])

    def predict_score(self, model, x_text: str, *, score_fn=None) -> list[float]:
        prompt = self.encode_for_prediction(x_text)
        token_probabilities = compute_output_probability(
            model=model,
            prompt=prompt,
            target_classes=self.labels,
            score_fn=score_fn,
        )
        return [token_probabilities[token] for token in self.labels]

    def predict(self, model, x_eval: str) -> int:
        return int(np.argmax(self.predict_score(model, x_eval)))


# hateful=0 -> 'Positive', hateful=1 -> 'Negative' (labels[y]); the codelab's
# y_prob for "hateful" is the 'Negative' probability.
CODELAB_CLASSIFIER = AgileClassifier(labels=CLASS_LABELS)


# ---------------------------------------------------------------------------
# Model


def build_codelab_model(
    model_name: str = "gemma3_270m",
    *,
    sequence_length: int = SEQUENCE_LENGTH,
    lora_rank: int = 4,
    learning_rate: float = 5e-4,
    seed: int = 1234,
) -> tuple[keras_hub.models.Gemma3CausalLM, keras_hub.models.Gemma3Tokenizer]:
    """The codelab's model (sections 4 and 8) on our weights: Gemma3CausalLM, LoRA rank 4, compiled.

    codelab: keras.utils.set_random_seed(1234); GemmaCausalLM.from_preset(...);
    model.preprocessor.sequence_length = 128; model.backbone.enable_lora(rank=4);
    model.compile(SparseCategoricalCrossentropy(from_logits=True), Adam(5e-4),
    weighted_metrics=[SparseCategoricalAccuracy()]).
    """
    from toolkit.models.gemma import merged_params
    from toolkit.weights.keras_preset import keras_backbone_config, set_backbone_weights
    from toolkit.models.configs import Runtime
    from toolkit.weights.loader import load_pretrained

    # For reproducibility purposes (also fixes the LoRA A initialisation).
    keras.utils.set_random_seed(seed)

    ours, tok = load_pretrained(model_name, runtime=Runtime(param_dtype="float32", dtype="float32"))
    spec = keras_backbone_config(ours.config)
    backbone_cls = getattr(keras_hub.models, spec["class_name"])
    backbone = backbone_cls(**spec["config"], dtype="float32")
    set_backbone_weights(backbone, ours.config, merged_params(ours))
    del ours

    if spec["class_name"] == "Gemma3Backbone":
        tokenizer = keras_hub.models.Gemma3Tokenizer(proto=tok.serialized_proto(), has_vision_tokens=False)
        preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(tokenizer=tokenizer, sequence_length=sequence_length)
        lm = keras_hub.models.Gemma3CausalLM(preprocessor=preprocessor, backbone=backbone)
    else:  # Gemma 1/2: the codelab's own classes
        tokenizer = keras_hub.models.GemmaTokenizer(proto=tok.serialized_proto())
        preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(tokenizer=tokenizer, sequence_length=sequence_length)
        lm = keras_hub.models.GemmaCausalLM(preprocessor=preprocessor, backbone=backbone)

    # Enable LoRA for the model and set the LoRA rank to 4.
    # (keras-hub default targets: the attention `query` and `value` EinsumDense layers.)
    lm.backbone.enable_lora(rank=lora_rank)

    # Compile the model using the Adam optimizer and appropriate loss function.
    lm.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    return lm, tokenizer


def _training_inputs(lm, training_strings: Sequence[str]) -> dict[str, list[str]]:
    """What the preprocessor takes for the codelab's plain training strings (see module docstring)."""
    if isinstance(lm.preprocessor, keras_hub.models.Gemma3CausalLMPreprocessor):
        # Empty prompt segment: loss on every token of the string, as GemmaCausalLMPreprocessor did.
        return {"prompts": [""] * len(training_strings), "responses": list(training_strings)}
    return list(training_strings)


def _label_index(y: Any, labels: Sequence[str]) -> int:
    if isinstance(y, str):
        return list(labels).index(y)
    return int(y)


def _token_count(tokenizer, text: str) -> int:
    return int(np.asarray(tokenizer(text)).shape[0])


# ---------------------------------------------------------------------------
# Benchmarks


class _StepTimer(keras.callbacks.Callback):
    """Wall-clock time at the end of every training batch, after the step's results are ready."""

    def __init__(self) -> None:
        super().__init__()
        self.t_begin: list[float] = []
        self.t_end: list[float] = []
        self.losses: list[float] = []

    def on_train_begin(self, logs=None):
        self.t0 = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        self.t_begin.append(time.perf_counter())

    def on_train_batch_end(self, batch, logs=None):
        # The step's outputs come from one XLA executable: when the loss is
        # ready, the whole step (forward, backward, Adam update) has run.
        loss = (logs or {}).get("loss")
        self.losses.append(float(np.asarray(loss)) if loss is not None else float("nan"))
        self.t_end.append(time.perf_counter())


def train_speed(
    lm,
    texts: Sequence[str],
    labels: Sequence[Any],
    *,
    batch_size: int = 2,
    steps: int = 10,
    warmup_steps: int = 2,
) -> dict[str, Any]:
    """Seconds per `fit` step of the codelab's training (section 8), compilation excluded.

    One `fit` over `warmup_steps + steps` batches of the codelab's training
    strings (`encode_for_training`, labels 0/1 or label names; texts are
    cycled if too few); per-batch end times come from a callback that waits
    for the step's loss. The first `warmup_steps` batches (compilation) are
    not timed. Tokens: real = non-padding input positions, padded =
    batch_size * sequence_length, both per step.
    """
    if warmup_steps < 1 or steps < 1:
        raise ValueError("train_speed needs warmup_steps >= 1 (the compile step) and steps >= 1")
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"texts and labels must be non-empty and of equal length ({len(texts)} vs {len(labels)})")
    clf = AgileClassifier(labels=CLASS_LABELS)
    n = (warmup_steps + steps) * batch_size
    pairs = list(itertools.islice(itertools.cycle(zip(texts, labels)), n))
    x_train = [clf.encode_for_training(t, _label_index(y, clf.labels)) for t, y in pairs]

    # Create dataset with preprocessed text + labels (codelab: from_tensor_slices(x_train).batch(2)).
    ds_train = tf.data.Dataset.from_tensor_slices(_training_inputs(lm, x_train)).batch(batch_size)

    # Token accounting for the timed batches, with the model's own preprocessor.
    pre = lm.preprocessor
    seq_len = int(pre.sequence_length)
    tokenizer = pre.tokenizer
    timed = x_train[warmup_steps * batch_size:]
    x, _, weights = keras.utils.unpack_x_y_sample_weight(pre(_training_inputs(lm, timed)))
    real_tokens = int(np.asarray(x["padding_mask"]).sum())
    supervised_tokens = int(np.asarray(weights).sum())
    # The label survives truncation only if bos + prompt + label fit in the sequence_length+1 window
    # (the packer keeps room for the end token).
    prompt_lens = [_token_count(tokenizer, clf.encode_for_prediction(t)) for t, _ in pairs[warmup_steps * batch_size:]]
    labels_truncated = sum(1 + p + 1 > seq_len for p in prompt_lens)

    timer = _StepTimer()
    t0 = time.perf_counter()
    lm.fit(ds_train, epochs=1, verbose=0, callbacks=[timer])
    wall = time.perf_counter() - t0

    ends = timer.t_end
    step_times = [ends[0] - timer.t0] + [b - a for a, b in zip(ends, ends[1:])]
    timed_s = ends[-1] - ends[warmup_steps - 1]
    sps = timed_s / steps
    return {
        "seconds_per_step": sps,
        "examples_per_s": batch_size / sps,
        "tokens_per_s": real_tokens / steps / sps,
        "padded_tokens_per_s": batch_size * seq_len / sps,
        "real_tokens_per_step": real_tokens / steps,
        "padded_tokens_per_step": batch_size * seq_len,
        "supervised_tokens_per_step": supervised_tokens / steps,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "batch_size": batch_size,
        "sequence_length": seq_len,
        "median_step_s": float(np.median(step_times[warmup_steps:])),
        "first_step_s_incl_compile": step_times[0],
        "step_times_s": step_times,
        "losses": timer.losses,
        "labels_truncated": labels_truncated,
        "examples_seen": n,
        "fit_wall_s": wall,
    }


def score_speed(
    lm,
    tokenizer,
    texts: Sequence[str],
    *,
    n: int = 20,
    labels: Sequence[str] = CLASS_LABELS,
    jit: bool = False,
) -> dict[str, Any]:
    """Examples/s of the codelab's per-example scoring (`predict_score` -> `compute_output_probability`).

    `jit=False` (default) is the codelab: an eager forward per example, like
    GemmaCausalLM.score. `jit=True` runs the same forward as one jitted XLA
    call (not in the codelab), to separate keras' eager dispatch from compute.

    One warm-up example (texts[0]) first, not timed; then texts[:n] one at a
    time, each: format the prompt, tokenize and pack to sequence_length,
    eager forward, softmax over the class tokens' logits at the last real
    position. `probabilities[i]` is `[P(labels[0]), P(labels[1])]` for texts[i]
    (for ETHOS: [P(not hateful), P(hateful)]). `tokenizer` (the keras
    tokenizer) is used only to count prompt tokens and truncated prompts.
    """
    texts = list(texts)[:n]
    if not texts:
        raise ValueError("score_speed needs at least one text")
    clf = AgileClassifier(labels=tuple(labels))
    seq_len = int(lm.preprocessor.sequence_length)

    t0 = time.perf_counter()
    score_fn = _jit_score if jit else _score
    clf.predict_score(lm, texts[0], score_fn=score_fn)  # warm-up (traces/compiles the eager ops at this shape)
    warmup_s = time.perf_counter() - t0

    probs: list[list[float]] = []
    per_example: list[float] = []
    t_start = time.perf_counter()
    for text in texts:
        t = time.perf_counter()
        probs.append([float(p) for p in clf.predict_score(lm, text, score_fn=score_fn)])
        per_example.append(time.perf_counter() - t)
    total = time.perf_counter() - t_start

    prompt_tokens = [1 + _token_count(tokenizer, clf.encode_for_prediction(t)) for t in texts]  # + <bos>
    return {
        "examples_per_s": len(texts) / total,
        "seconds_per_example": total / len(texts),
        "n": len(texts),
        "warmup_s": warmup_s,
        "median_example_s": float(np.median(per_example)),
        "labels": list(labels),
        "probabilities": probs,
        "prompt_tokens": prompt_tokens,
        "prompts_truncated": sum(p > seq_len for p in prompt_tokens),
        "sequence_length": seq_len,
        "forward": "jit" if jit else "eager (codelab)",
    }


# ---------------------------------------------------------------------------
# Data and CLI


def load_ethos(data_dir: Path | None = ETHOS_DIR):
    """The codelab's ETHOS split (hateful = isHate >= median, random_state=32, 800 train), from the
    toolkit's one implementation of that recipe, under the codelab's column names."""
    from toolkit.data.sources import ethos_split
    from toolkit.data.sources import load_ethos as toolkit_ethos

    train, test = ethos_split(toolkit_ethos(local_dir=data_dir))
    rename = {"text": "comment", "label": "hateful"}
    return train.rename(columns=rename), test.rename(columns=rename)


def environment() -> dict[str, Any]:
    import jax
    import jaxlib

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "tensorflow": tf.__version__,
        "KERAS_BACKEND": os.environ.get("KERAS_BACKEND"),
        "keras_backend": keras.config.backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--score-n", type=int, default=20)
    ap.add_argument("--score-jit", action="store_true",
                    help="also time scoring with a jitted forward (not the codelab's; for comparison)")
    args = ap.parse_args(argv)

    df_train, df_test = load_ethos()
    t0 = time.perf_counter()
    lm, tokenizer = build_codelab_model(args.model)
    build_s = time.perf_counter() - t0

    clf = CODELAB_CLASSIFIER
    example_text, example_y = df_train['comment'].iloc[0], int(df_train['hateful'].iloc[0])
    prompt, training = clf.encode_for_prediction(example_text), clf.encode_for_training(example_text, example_y)

    # Scoring first, while LoRA B is still zero: these are the pretrained
    # model's probabilities, which our own model should reproduce.
    score = score_speed(lm, tokenizer, list(df_test['comment']), n=args.score_n)
    score["hateful"] = [int(v) for v in df_test['hateful'].iloc[:score["n"]]]
    score_jit = None
    if args.score_jit:
        score_jit = score_speed(lm, tokenizer, list(df_test['comment']), n=args.score_n, jit=True)
        score_jit["max_abs_diff_vs_eager"] = float(np.abs(np.subtract(score_jit["probabilities"],
                                                                      score["probabilities"])).max())
        del score_jit["probabilities"], score_jit["prompt_tokens"]
    train = train_speed(lm, list(df_train['comment']), list(df_train['hateful']),
                        batch_size=args.batch_size, steps=args.steps, warmup_steps=args.warmup_steps)

    result = {
        "model": args.model,
        "build_s": build_s,
        "label_mapping": {"hateful=0": clf.labels[0], "hateful=1": clf.labels[1]},
        "example_prompt": prompt,
        "example_training_string": training,
        "example_prompt_pieces": [tokenizer.id_to_token(int(i)) for i in np.asarray(tokenizer(prompt))][:40],
        "separator_token_id_keras": int(tokenizer.token_to_id(clf.separator_token)),
        "unk_id": int(tokenizer.token_to_id("<unk>")),
        "train": train,
        "score": score,
        "score_jit": score_jit,
        "previous_measurement": {"seconds_per_step": 2.47, "score_examples_per_s": 1.8},
        "environment": environment(),
    }
    print(json.dumps(result, indent=1, default=float))
    return result


if __name__ == "__main__":
    main()
