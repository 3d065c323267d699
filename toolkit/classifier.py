"""`AgileClassifier`: the codelab's classifier as a scikit-learn-style object.

A text is scored by the next-token logits of one token per class at the end
of a prompt; `fit` trains LoRA adapters (the only trainable state) so that
those logits separate the classes. The model loads lazily, on the first
`fit` / `predict`, so building a classifier (or a config) is free.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from toolkit import saved_files
from toolkit.config import ClassifierSection, MeshConfig, ModelSection, TrainConfig
from toolkit.data.prompt import PromptFormat, Questions, class_token_ids
from toolkit.models.lora import LoRAConfig
from toolkit.spec import IN_MEMORY, ClassifierSpec, classifier_class


class PromptFitError(ValueError):
    """The labels, verbalizers or prompt do not fit the model's tokenizer; `key` is the
    `classifier.` config key to change (verbalizers, max_length or prompt)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _as_list(x: Iterable[Any], what: str = "texts") -> list[Any]:
    """Lists, tuples, numpy arrays and pandas Series all become plain lists.

    A bare string is refused, not read as one text: `list("hello")` is five one-letter
    texts, and scoring those silently is worse than an error."""
    if isinstance(x, (str, bytes)):
        from toolkit.data.sources import DataError

        shown = x if len(x) <= 40 else x[:37] + "..."
        raise DataError(f"{what}: got a single string {shown!r}; pass a list of them, e.g. [{shown!r}]")
    if hasattr(x, "tolist"):
        return list(x.tolist())
    return list(x)


def _class_names(labels: Any) -> tuple[str, ...]:
    """`labels` as a tuple of class-name strings; anything else (a bare string, numbers) is refused."""
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise ValueError(f"labels: got {labels!r}; must be a sequence of class-name strings, e.g. ('no', 'yes')")
    names = tuple(labels.tolist() if hasattr(labels, "tolist") else labels)
    bad = [v for v in names if not isinstance(v, str)]
    if bad:
        raise ValueError(f"labels: got {list(names)!r}; must be class-name strings ({bad[0]!r} is a "
                         f"{type(bad[0]).__name__}), e.g. ('no', 'yes')")
    if len(names) < 2 or len(set(names)) != len(names) or not all(v.strip() for v in names):
        raise ValueError(f"labels: got {list(names)!r}; must be at least two distinct, non-empty class names")
    return tuple(str(v) for v in names)


class AgileClassifier(ClassifierMixin, BaseEstimator):
    """A few-shot text classifier: a frozen Gemma, a prompt, and LoRA adapters.

    Args:
      labels: the class names, in order; `predict_proba` columns follow it.
      model: a model spec for `toolkit.load_pretrained` ("gemma3_270m", a
        .gguf, a keras-hub preset dir, a Kaggle handle), or a
        `(Gemma, Tokenizer)` pair already in memory.
      lora: adapter config (`LoRAConfig` or a dict of its fields).
      prompt: prompt format (`PromptFormat` or a dict of its fields).
      verbalizers: class name -> the single-token word the model predicts.
      train: optimisation config (`TrainConfig` or a dict of its fields).
      max_length: prompt length cap in tokens; only the text is ever truncated.
      mesh: device mesh (`MeshConfig` or a dict: data / fsdp / tensor sizes);
        default: data parallel over every device of every process.
      remat: activation checkpointing per layer, "none", "dots" or "full".
      base_quant: "none", or "int8" / "int4" to store the frozen base quantized (QLoRA:
        about 0.27x / 0.15x of its fp32 bytes; the adapters stay fp32).
      zero_shot: allow `predict` / `predict_proba` before `fit` (the untrained
        model's answers); otherwise they raise `NotFittedError`.
      warm_start: `fit` starts from the adapters the classifier holds (an earlier fit's,
        `load`'s or `use_adapters`') instead of fresh ones, as scikit-learn's
        `warm_start`: the next round of labelling builds on the last.

    A scikit-learn estimator: `get_params` / `set_params` / `clone` keep every
    argument as given, so `cross_val_score`, `GridSearchCV` (e.g. over
    `train=[{"learning_rate": 1e-3}, {"learning_rate": 5e-4}]`) and `Pipeline`
    work; `classes_` is set by `fit` and `load`.
    """

    def __init__(
        self,
        labels: Sequence[str],
        *,
        model: Any = "gemma3_270m",
        lora: LoRAConfig | dict[str, Any] | None = None,
        prompt: PromptFormat | dict[str, Any] | None = None,
        verbalizers: dict[str, str] | None = None,
        train: TrainConfig | dict[str, Any] | None = None,
        max_length: int = 256,
        param_dtype: str = "auto",
        dtype: str = "auto",
        progress: bool = True,
        mesh: Any = None,
        remat: str = "dots",
        zero_shot: bool = False,
        base_quant: str = "none",
        warm_start: bool = False,
    ):
        # scikit-learn's contract: every argument is kept exactly as given (`get_params`,
        # `clone`, `GridSearchCV` rely on it); the typed configs are derived views.
        self.labels = labels
        self.model = model
        self.lora = lora
        self.prompt = prompt
        self.verbalizers = verbalizers
        self.train = train
        self.max_length = max_length
        self.param_dtype = param_dtype
        self.dtype = dtype
        self.progress = progress
        self.mesh = mesh
        self.remat = remat
        self.zero_shot = zero_shot
        self.base_quant = base_quant
        self.warm_start = warm_start
        self.history: list[dict[str, Any]] = []
        # The operating point chosen by `tune_threshold` ({"threshold", "positive", the target,
        # precision / recall / f1 on the tuning rows}); None: the most probable class wins.
        self.threshold_: dict[str, Any] | None = None
        self._head_weights: np.ndarray | None = None  # train.trainable=head: (classes, embed)
        self._loaded = False
        self._derive()

    def _derive(self) -> None:
        """Validate the arguments into the spec (errors at construction, not at fit)."""
        as_type = lambda tp, v: v if isinstance(v, tp) else tp(**(v or {}))  # noqa: E731
        name = str(self.model) if isinstance(self.model, (str, os.PathLike)) else IN_MEMORY
        self.spec = ClassifierSpec(
            classifier=ClassifierSection(labels=_class_names(self.labels), verbalizers=self.verbalizers,
                                         prompt=as_type(PromptFormat, self.prompt), max_length=self.max_length,
                                         **self._task_fields()),
            model=ModelSection(name=name, param_dtype=self.param_dtype, dtype=self.dtype, remat=self.remat,
                               base_quant=self.base_quant),
            lora=as_type(LoRAConfig, self.lora), train=as_type(TrainConfig, self.train),
            mesh=as_type(MeshConfig, self.mesh))
        if self.spec.train.trainable == "full" and self.base_quant != "none":
            raise ValueError(f"train.trainable=full trains every weight, so the base cannot be stored quantized "
                             f"(base_quant={self.base_quant!r}); use base_quant='none', or trainable lora")

    def _task_fields(self) -> dict[str, Any]:
        """This kind's own `classifier` section fields (`task` and what goes with it)."""
        return {}

    @classmethod
    def _task_arguments(cls, section: ClassifierSection) -> dict[str, Any]:
        """The inverse of `_task_fields`: this kind's own constructor arguments."""
        return {}

    @classmethod
    def from_spec(cls, spec: ClassifierSpec, *, model: Any = None, progress: bool = True,
                  zero_shot: bool = False) -> "AgileClassifier":
        """The classifier `spec` describes, of the class its `classifier.task` names
        (`toolkit.spec.CLASSES`); `model`: the (Gemma, Tokenizer) pair of an in-memory base."""
        kind = classifier_class(spec.task)
        if not issubclass(kind, cls):
            raise ValueError(f"{cls.__name__}.from_spec: the spec is a {spec.task} classifier's; "
                             f"use {kind.__name__}.from_spec")
        c, m = spec.classifier, spec.model
        if model is None and m.name == IN_MEMORY:
            raise ValueError(f"model.name {IN_MEMORY!r}: the base was given in memory; pass model=(gemma, tokenizer)")
        return kind(labels=c.labels, model=model if model is not None else m.name, lora=spec.lora, prompt=c.prompt,
                    verbalizers=c.verbalizers, train=spec.train, max_length=c.max_length, param_dtype=m.param_dtype,
                    dtype=m.dtype, progress=progress, mesh=spec.mesh, remat=m.remat, zero_shot=zero_shot,
                    base_quant=m.base_quant, **kind._task_arguments(c))

    @classmethod
    def from_config(cls, cfg: Any, *, categories: Sequence[str] | None = None, progress: bool = True,
                    zero_shot: bool = False) -> "AgileClassifier":
        """The classifier a run config (`toolkit.config.RunConfig`) describes, of the kind
        its `classifier.task` says; `categories`: a multi-label run's data's own, used when
        `classifier.categories` is unset."""
        return cls.from_spec(ClassifierSpec.from_config(cfg, categories), progress=progress, zero_shot=zero_shot)

    def set_params(self, **params: Any) -> "AgileClassifier":
        """scikit-learn's `set_params`; changing anything but `train`, `progress` or `warm_start`
        reloads the model at the next fit (fresh adapters), and any change forgets the fit (a
        warm start still starts from the adapters kept)."""
        super().set_params(**params)
        self._derive()
        if set(params) - {"train", "progress", "warm_start"}:
            self._loaded = False
        self.__dict__.pop("classes_", None)
        self.threshold_ = None
        self._head_weights = None
        return self

    # The spec's parts, under the names the rest of the toolkit reads.
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.classifier.labels

    @property
    def lora_config(self) -> LoRAConfig:
        return self.spec.lora

    @property
    def prompt_format(self) -> PromptFormat:
        return self.spec.classifier.prompt

    @property
    def train_config(self) -> TrainConfig:
        return self.spec.train

    @property
    def mesh_config(self) -> MeshConfig:
        return self.spec.mesh

    @property
    def verbalizer_map(self) -> dict[str, str]:
        return dict(self.spec.classifier.verbalizers or {})

    @property
    def model_spec(self) -> Any:
        return self.model

    def _fitted_classes(self) -> np.ndarray:
        """`classes_`: what `predict_proba`'s columns are."""
        return np.asarray(self.class_names)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "classes_")

    def _check_fitted(self) -> None:
        """Scoring before `fit` is a mistake unless the untrained model is what is wanted."""
        if not (self.zero_shot or self.__sklearn_is_fitted__()):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"this {type(self).__name__} is not fitted: call fit(texts, labels) first, "
                                 "load() a saved one, or pass zero_shot=True to score with the untrained model")

    # ------------------------------------------------------------------ model
    def _ensure_model(self) -> None:
        if self._loaded:
            return
        from toolkit.models.build import from_params
        from toolkit.models.gemma import frozen_params
        from toolkit.train.loop import place_parts
        from toolkit.train.mesh import make_mesh, state_shardings
        from toolkit.train.step import split_model
        from toolkit.weights.loader import load_pretrained

        mesh = make_mesh(self.mesh_config)
        runtime = self.spec.model.runtime()

        def shardings(abstract: Any) -> Any:  # the base lands in its shards as it loads
            return state_shardings(abstract, mesh)

        lora = None if self.train_config.trainable == "full" else self.lora_config  # full: no adapters
        if isinstance(self.model, (str, os.PathLike)):
            model, tok = load_pretrained(self.model, lora=lora, runtime=runtime, seed=self.train_config.seed,
                                         shardings=shardings)
        else:
            base, tok = self.model
            model = from_params(base.config, frozen_params(base), runtime=runtime, lora=lora,
                                seed=self.train_config.seed, source="model", shardings=shardings)
        self.tokenizer = tok
        self.model_config = model.config
        try:
            self.class_ids = class_token_ids(tok, self.class_names, self.verbalizer_map)
        except ValueError as e:
            raise PromptFitError("verbalizers", str(e)) from None
        try:
            self.questions = Questions(self.prompt_format, self.class_names, tok, self.max_length, self._instructions())
        except ValueError as e:
            raise PromptFitError("max_length" if "max_length" in str(e) else "prompt", str(e)) from None
        self._placement = place_parts(split_model(model, self.train_config.trainable), mesh, model.config,
                                      model.runtime)
        self._parts = self._placement.parts
        self._lora = self._parts.lora
        self._loaded = True

    # ------------------------------------------------------------------- data
    def _checked(self, texts: Iterable[Any], labels: Iterable[Any] | None, what: str):
        """Validated (texts, class indices or None). Labels may be class names or indices."""
        import pandas as pd

        from toolkit.data.sources import DataError, check_labels, from_dataframe

        texts = _as_list(texts, f"{what}: texts")
        if labels is None:
            df = from_dataframe(pd.DataFrame({"text": texts, "label": [self.class_names[0]] * len(texts)}), source=what)
            return df["text"].tolist(), None
        labels = _as_list(labels, f"{what}: labels")
        if len(labels) != len(texts):
            raise DataError(f"{what}: {len(texts)} texts but {len(labels)} labels")
        names = [self.class_names[v] if isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                 and str(v) not in self.class_names and 0 <= v < len(self.class_names) else v for v in labels]
        df = from_dataframe(pd.DataFrame({"text": texts, "label": names}), source=what)
        df["label"] = df["label"].astype(str)
        check_labels(df, self.class_names, source=what, require_all=(what == "fit(texts, labels)"))
        index = {c: i for i, c in enumerate(self.class_names)}
        return df["text"].tolist(), np.array([index[v] for v in df["label"]], np.int32)

    # What a kind of classifier says about its questions, answers and outputs; the scoring
    # itself (`questions`, `_proba_ids`) is the same for every kind.
    def _instructions(self) -> list[str] | None:
        """Each question's instructions (`toolkit.data.prompt.Questions`); None: one question,
        the prompt's own."""
        return None

    def _answers(self, y: np.ndarray) -> np.ndarray:
        """The answer (class token) index of every (question, text) prompt, question-major,
        from the labels as `_checked` returns them."""
        return y

    def _outputs(self, probs: np.ndarray) -> np.ndarray:
        """`predict_proba`'s output from every prompt's answer probabilities (question-major)."""
        return probs

    def _eval_metrics(self, y: np.ndarray, out: np.ndarray) -> dict[str, Any]:
        """Metrics of `_outputs` against the labels, as each epoch's eval scores them."""
        from toolkit.metrics import classification_metrics

        return classification_metrics(y, out, self.class_names)

    # -------------------------------------------------------------------- API
    def fit(
        self,
        texts: Iterable[str],
        labels: Iterable[Any],
        *,
        eval_texts: Iterable[str] | None = None,
        eval_labels: Iterable[Any] | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        callbacks: Sequence[Any] = (),
    ) -> "AgileClassifier":
        """Train the adapters on (texts, labels); with `eval_texts`, score them after each epoch.

        With `checkpoint_dir`, Orbax checkpoints are written there each epoch and
        `resume=True` continues from the latest. `callbacks` (`toolkit.train.callbacks`)
        add anything else around the steps: W&B tracking (`Tracking`), checkpoints with
        a policy of their own (`Checkpointing`), a sweep's reports, your own."""
        from toolkit.train.callbacks import Checkpointing, EarlyStop, EpochEval, Tracking, WarmStart
        from toolkit.train.loop import fit

        if self.warm_start and self.train_config.trainable == "head":
            raise ValueError("warm_start=True continues trained adapters; train.trainable=head fits its head "
                             "afresh in seconds: set warm_start=False, or train lora / full")
        ids, y = self._training_rows(texts, labels, "fit(texts, labels)")
        self._head_weights = None
        if self.train_config.trainable == "head":
            for cb in callbacks:  # a head trains in seconds: no checkpoints, tracking or reports to run
                cb.close()
            return self._fit_head(ids, y, eval_texts, eval_labels)
        extra: list[Any] = [WarmStart(self._lora)] if self.warm_start else []  # before Checkpointing: see WarmStart
        if eval_texts is not None and self.train_config.eval_every_epoch:
            e_ids, e_y = self._training_rows(eval_texts, eval_labels, "fit(eval_texts, eval_labels)")
            tracker = next((cb.tracker for cb in callbacks if isinstance(cb, Tracking)), None)
            extra.append(EpochEval(self._epoch_eval(e_ids, e_y, tracker)))
        if checkpoint_dir is not None:
            from toolkit.train.checkpoint import Checkpointer

            extra.append(Checkpointing(Checkpointer(checkpoint_dir), resume=resume))
        stopping = self.train_config.early_stopping
        if stopping is not None and not any(isinstance(cb, EpochEval) for cb in extra):
            raise ValueError("train.early_stopping needs rows to score each epoch: pass eval_texts / eval_labels "
                             "(a run config: data.validation_size > 0), or unset it")
        last = [EarlyStop(stopping)] if stopping is not None else []  # after every recorder: see EarlyStop
        t0 = time.perf_counter()
        self._lora, self.history = fit(self._placement, ids, self._answers(y), self.class_ids, self.train_config,
                                       max_length=self.max_length, pad_id=self.tokenizer.pad_id,
                                       head=self.questions.head,
                                       callbacks=[*extra, *callbacks, *last], progress=self.progress)
        self.fit_seconds = time.perf_counter() - t0
        self.classes_ = self._fitted_classes()
        self.threshold_ = None  # chosen for the adapters it was tuned with
        return self

    def _training_rows(self, texts: Iterable[str], labels: Iterable[Any], what: str) -> tuple[list[list[int]], np.ndarray]:
        """(every prompt's ids after the shared head, the labels as `_checked` returns them);
        the model is loaded."""
        texts, y = self._checked(texts, labels, what)
        self._ensure_model()
        return self.questions.encode(texts), y

    def _epoch_eval(self, ids: list[list[int]], y: np.ndarray, tracker: Any) -> Any:
        """`EpochEval`'s function: metrics on held-out rows; their plots go to an active tracker."""

        def evaluate(fit: Any) -> dict[str, Any]:
            probs = self._outputs(self._proba_ids(ids, fit.lora))
            m = self._eval_metrics(y, probs)
            if tracker is not None and tracker.active:
                out = Path(tempfile.mkdtemp(prefix=f"agile-eval-{fit.epoch + 1}-"))
                tracker.log_images({f"eval/{k}": v for k, v in self._plots(y, probs, m, out).items()}, step=fit.step)
            return {f"eval_{k}": v for k, v in m.items() if isinstance(v, (int, float)) or v is None}

        return evaluate

    def _proba_ids(self, ids: list[list[int]], lora: Any, with_hidden: bool = False) -> Any:
        if self._head_weights is not None:  # train.trainable=head: the head reads the frozen model's features
            from toolkit.train.head import head_probs

            hidden = self._features(ids)
            probs = head_probs(hidden, self._head_weights, self.model_config.final_logit_softcap)
            return (probs, hidden) if with_hidden else probs
        return self._scored_ids(ids, lora, with_hidden)

    def _features(self, ids: list[list[int]]) -> np.ndarray:
        """The frozen model's last-token hidden states (no adapters): a head's features."""
        return self._scored_ids(ids, self._parts.lora, True)[1]

    def _scored_ids(self, ids: list[list[int]], lora: Any, with_hidden: bool) -> Any:
        from toolkit.train.loop import predict_proba

        return predict_proba(self._placement, lora, ids, self.class_ids, batch_size=self.train_config.eval_batch_size,
                             max_length=self.max_length, pad_id=self.tokenizer.pad_id, progress=self.progress,
                             head=self.questions.head, packing=self.train_config.packing, with_hidden=with_hidden)

    def _fit_head(self, ids: list[list[int]], y: np.ndarray, eval_texts: Any, eval_labels: Any) -> "AgileClassifier":
        """`train.trainable=head` (`toolkit.train.head`): features once, then a linear head
        that starts as the class tokens' embedding rows (the zero-shot classifier)."""
        from toolkit.metrics import classification_metrics
        from toolkit.train.head import fit_head, head_probs

        if len(self.questions) > 1:
            raise ValueError("train.trainable=head: single-label classifiers only, for now; use lora for multi-label")
        t0 = time.perf_counter()
        features = self._features(ids)
        import jax.numpy as jnp

        # The zero-shot head: the class tokens' embedding rows (dequantized for a quantized base).
        init = np.asarray(self._model().embedder.rows(jnp.float32, jnp.asarray(self.class_ids)), np.float32)
        softcap = self.model_config.final_logit_softcap
        evaluate = None
        if eval_texts is not None:
            e_ids, e_y = self._training_rows(eval_texts, eval_labels, "fit(eval_texts, eval_labels)")
            e_features = self._features(e_ids)

            def evaluate(weights: np.ndarray, epoch: int) -> dict[str, Any]:
                m = classification_metrics(e_y, head_probs(e_features, weights, softcap), self.class_names)
                return {f"eval_{k}": v for k, v in m.items() if isinstance(v, (int, float)) or v is None}

        self._head_weights, self.history = fit_head(features, y, init, self.train_config, softcap=softcap,
                                                    evaluate=evaluate)
        self._lora = self._parts.lora
        self.fit_seconds = time.perf_counter() - t0
        self.classes_ = self._fitted_classes()
        self.threshold_ = None
        return self

    def _pool_scores(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(`predict_proba`'s output, each text's last-token hidden state averaged over its
        questions) of each text: what `suggest` ranks by."""
        self._check_fitted()
        self._ensure_model()
        probs, hidden = self._proba_ids(self.questions.encode(texts), self._lora, with_hidden=True)
        return self._outputs(probs), hidden.reshape(len(self.questions), len(texts), -1).mean(axis=0)

    def suggest(self, texts: Iterable[str], k: int, *, strategy: str = "uncertainty",
                exclude: Iterable[str] = (), seed: int = 0) -> Any:
        """The `k` texts of the pool most worth labelling next, most useful first, each with
        the reason (`toolkit.suggest.suggest`: uncertainty, entropy, diverse or random)."""
        from toolkit.suggest import suggest

        return suggest(self, texts, k, strategy=strategy, exclude=exclude, seed=seed)

    def _plots(self, y: np.ndarray, probs: np.ndarray, m: dict[str, Any], out: Path) -> dict[str, str]:
        """confusion_matrix.png (+ roc_curve.png and pr_curve.png, the threshold's point marked,
        for two classes) in `out`; {name: path}."""
        from toolkit.plots import plot_confusion_matrix, plot_pr_curve, plot_roc_curve

        paths = {"confusion_matrix": plot_confusion_matrix(np.array(m["confusion_matrix"]), list(self.class_names),
                                                           out / "confusion_matrix.png")}
        if len(self.class_names) == 2:
            pos = self.class_names.index(m["positive"]) if isinstance(m.get("positive"), str) else 1
            is_pos = (y == pos).astype(int)
            paths["roc_curve"] = plot_roc_curve(is_pos, probs[:, pos], out / "roc_curve.png")
            point = None
            if m.get("threshold") is not None:
                pc = m["per_class"][self.class_names[pos]]
                point = (pc["recall"] or 0.0, pc["precision"] or 0.0, f"threshold {m['threshold']:.3f}")
            paths["pr_curve"] = plot_pr_curve(is_pos, probs[:, pos], out / "pr_curve.png", point=point)
        return {k: str(v) for k, v in paths.items()}

    def predict_proba(self, texts: Iterable[str]) -> np.ndarray:
        """(n, len(labels)) class probabilities: softmax over the class tokens' logits (a
        multi-label classifier: (n, categories), each category's "yes" probability)."""
        texts, _ = self._checked(texts, None, "predict(texts)")  # a bad argument first: it names what to fix
        self._check_fitted()
        self._ensure_model()
        return self._outputs(self._proba_ids(self.questions.encode(texts), self._lora))

    def predict(self, texts: Iterable[str]) -> np.ndarray:
        """The class name per text (an array of the labels' type, like `classes_`): the most
        probable one, or, once `tune_threshold` has chosen one, the positive class wherever
        its probability reaches the threshold."""
        return np.asarray(self.class_names)[self._decide(self.predict_proba(texts))]

    def _decide(self, probs: np.ndarray) -> np.ndarray:
        if self.threshold_ is None:
            return probs.argmax(-1)
        pos = self.class_names.index(self.threshold_["positive"])
        return np.where(probs[:, pos] >= self.threshold_["threshold"], pos, 1 - pos)

    def _threshold_problem(self, threshold: Any) -> str | None:
        """Why a saved threshold does not fit this classifier (None: it does)."""
        if (not isinstance(threshold, dict) or not isinstance(threshold.get("threshold"), (int, float))
                or threshold.get("positive") not in self.class_names):
            return f"needs a number and a positive class of {list(self.class_names)}"
        return None

    def tune_threshold(self, texts: Iterable[str], labels: Iterable[Any], *, target_precision: float | None = None,
                       target_recall: float | None = None, metric: str | None = None,
                       positive: str | int | None = None) -> dict[str, Any]:
        """Choose the operating point on labelled rows the adapters did not train on (a
        validation split): exactly one of `target_precision`, `target_recall` or
        `metric="f1"` (binary classifiers; `positive` defaults to the second label).
        `predict`, `evaluate`, `save` and `agile-predict` then use it. Returns the
        threshold with its precision / recall / F1 on these rows."""
        from toolkit.metrics import _resolve_positive
        from toolkit.threshold import choose_threshold

        if len(self.class_names) != 2:
            raise ValueError(f"tune_threshold: a threshold needs two classes, not {len(self.class_names)}")
        texts, y = self._checked(texts, labels, "tune_threshold(texts, labels)")
        pos = _resolve_positive(positive, list(self.class_names))
        probs = self.predict_proba(texts)
        info = choose_threshold(y == pos, probs[:, pos], target_precision=target_precision,
                                target_recall=target_recall, metric=metric)
        self.threshold_ = {**info, "positive": self.class_names[pos]}
        return dict(self.threshold_)

    def evaluate(self, texts: Iterable[str], labels: Iterable[Any], *, out_dir: str | Path | None = None,
                 positive: str | int | None = None) -> dict[str, Any]:
        """Metrics on labelled texts; with `out_dir`, also metrics.json, confusion matrix and
        ROC curve PNGs, and the most confidently misclassified examples."""
        from toolkit.metrics import classification_metrics, misclassified

        texts, y = self._checked(texts, labels, "evaluate(texts, labels)")
        probs = self.predict_proba(texts)
        t = self.threshold_
        m = classification_metrics(y, probs, self.class_names, positive=t["positive"] if t else positive,
                                   threshold=t["threshold"] if t else None)
        if out_dir is not None:
            from toolkit.io_utils import write_json
            from toolkit.plots import write_misclassified

            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "metrics.json", m)
            self._plots(y, probs, m, out)
            write_misclassified(misclassified(texts, y, probs, list(self.class_names)), out / "misclassified.csv")
        return m

    # -------------------------------------------------------------- save/load
    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write adapters + metadata (+ the base and tokenizer when the model was given
        in memory) into `directory`, atomically: a crash leaves the old directory or none.
        `directory` may be an object-store URI (`gs://...`): `classifier.json`, the
        marker, is then published last (`toolkit.storage`).

        An earlier saved classifier there is replaced. An existing file is never replaced
        by a directory, and a non-empty folder that is not a saved classifier (someone's
        other files) is refused unless `overwrite=True`: both raise FileExistsError."""
        import jax

        from toolkit.storage import location, writing_dir

        target = location(directory)  # a local folder, or an object-store URI (gs://...)
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"save({str(target)!r}): that is an existing file, not a directory; "
                                  "choose a directory path (the classifier is a folder of files)")
        if (target.is_dir() and any(target.iterdir()) and not saved_files.is_saved(target) and not overwrite):
            raise FileExistsError(f"save({str(target)!r}): the folder holds files and is not a saved classifier "
                                  f"(no {saved_files.META}); choose an empty or new folder, or pass overwrite=True "
                                  "to replace it")
        files = self.host_files()  # a collective: every process gathers, only process 0 writes
        if jax.process_index() == 0:
            with writing_dir(directory, markers=[saved_files.META]) as tmp:
                saved_files.write(self, tmp, files)
        return target

    def host_files(self) -> dict[str, Any]:
        """The adapters (and the base, for an in-memory model) gathered to host memory.

        Sharded arrays are gathered on every process, so every process must call this."""
        from toolkit.models.gemma import flat_state, frozen_params
        from toolkit.train.mesh import to_host

        self._ensure_model()
        model = self._model()
        files: dict[str, Any] = {"lora": to_host(flat_state(model, self._trainable_filter())), "base": None,
                                 "head": self._head_weights}
        if not isinstance(self.model, (str, os.PathLike)):
            files["base"] = frozen_params(model, gather=to_host)
        return files

    @classmethod
    def load(cls, directory: str | Path, *, progress: bool = True, mesh: Any = None) -> "AgileClassifier":
        """Rebuild a saved classifier, of whichever kind it was saved as (base weights from
        its spec or from the directory); `mesh` overrides the saved mesh (a model trained
        on a pod can score on one CPU)."""
        return saved_files.load(directory, progress=progress, mesh=mesh)

    @property
    def placement(self) -> Any:
        """The model's parts on its mesh (`toolkit.train.loop.Placement`); loads the model."""
        self._ensure_model()
        return self._placement

    def start_from(self, directory: str | Path) -> "AgileClassifier":
        """Take a saved classifier's trained adapters as this one's, and fit from them from
        now on (`warm_start=True`): the next round of labelling builds on the last
        (`agile-train --continue DIR`). Only the adapters are read; the labels, base model,
        LoRA shape and what trains must be the saved one's, or an error names the first
        that differs."""
        saved, flat, source = saved_files.read_adapters(directory)
        for key, mine, theirs in (("classifier.task", self.spec.task, saved.task),
                                  ("classifier.categories", self.spec.classifier.categories,
                                   saved.classifier.categories),
                                  ("classifier.labels", self.spec.classifier.labels, saved.classifier.labels),
                                  ("classifier.verbalizers", self.spec.classifier.verbalizers,
                                   saved.classifier.verbalizers),
                                  ("model.name", self.spec.model.name, saved.model.name),
                                  ("lora", self.spec.lora, saved.lora),
                                  ("train.trainable", self.spec.train.trainable, saved.train.trainable)):
            if mine != theirs:
                raise ValueError(f"{directory}: {key} is {theirs!r} there and {mine!r} here; a warm start continues "
                                 f"the same adapters: set {key} to the saved value, or train from scratch")
        self._ensure_model()
        self._set_lora(flat, source=str(source))
        self.warm_start = True
        return self

    def use_adapters(self, lora: Any, *, history: Sequence[dict[str, Any]] = ()) -> "AgileClassifier":
        """Score with these trained adapters (a LoRA state of this model, e.g. restored from a
        run's Orbax checkpoint); the classifier then counts as fitted."""
        self._ensure_model()
        self._lora = lora
        self.history = list(history)
        self.classes_ = self._fitted_classes()
        return self

    def _model(self):
        from flax import nnx

        return nnx.merge(self._parts.eval_graph, self._lora, self._parts.frozen, self._parts.rest)

    def _set_lora(self, flat: dict[str, np.ndarray], source: str) -> None:
        from flax import nnx

        from toolkit.models.gemma import set_flat

        model = self._model()
        set_flat(model, flat, self._trainable_filter(), source=source)
        from toolkit.train.mesh import place

        self._lora = place(nnx.state(model, self._trainable_filter()), self._placement.shardings.lora)

    def _trainable_filter(self) -> Any:
        """The variables `fit` trains and `save` writes to lora.npz: the adapters, or every
        weight with `train.trainable=full`."""
        from toolkit.train.step import trainable_filter

        return trainable_filter(self.train_config.trainable)
