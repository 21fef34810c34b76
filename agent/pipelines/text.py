"""The text-nlu pipeline: an utterance in, an intent with its confidence and character-offset slots out.

The text-nlu model contract (what a bundle for task ``text-nlu`` must ship and compute):

Files, named by ``manifest.preprocessing.text`` (an empty field means the default name):
- ``tokenizer_file`` (default ``tokenizer.json``): a Hugging Face ``tokenizers`` JSON file whose
  post-processor adds the model's special tokens (e.g. [CLS]/[SEP]). Padding configured in the
  file is ignored; truncation is set by the agent.
- ``intent_labels_file`` (default ``intents.txt``): UTF-8, one intent label per line, in the order
  of the model's intent logits; labels are non-empty and unique.
- ``slot_labels_file`` (default ``slots.txt``): UTF-8, BIO tags one per line in the order of the
  model's slot logits; the first line is ``O``, every other line is ``B-<slot>`` or ``I-<slot>``.
- ``max_sequence_length`` (0 means 128, at most 4096): token sequences, special tokens
  included, are truncated to it.
- ``lowercase``: the text is lowercased before tokenizing (offsets still refer to the original text).
- the ONNX model (``model_file``).

Model inputs, one utterance per call (batch 1), sequence length the REAL token count (no padding):
- ``input_ids``      int64 [batch, seq]
- ``attention_mask`` int64 [batch, seq] (all ones)
Model outputs:
- ``intent_logits``  float32 [batch, n_intents]
- ``slot_logits``    float32 [batch, seq, n_slots]
Where an output's last dimension is static it must equal the label count; this is checked at load.

Post-processing:
- intent: softmax over ``intent_logits``; the answer is the top-1 label and its probability.
- slots: tags are read per word, from the word's first token, over the tokens in order, skipping
  special tokens and tokens with an empty character span. A token that continues a word (its span
  starts where the previous token's ends, with a letter or digit on both sides of that point, e.g.
  a WordPiece ``##`` piece) has its own tag ignored; it extends the open span when the word's first
  token is in it, and nothing otherwise, so a span never starts or ends inside a word.
  The words' tags are the most probable valid BIO sequence (``BioDecoder``): Viterbi over the
  log-softmax of each word's ``slot_logits``, where ``I-x`` may only follow ``B-x`` or ``I-x`` and
  cannot open the sequence. Where the per-word argmax is already valid it is that sequence (the
  common case, no search). Then ``decode_bio``: ``B-x`` starts a span of type x; ``I-x`` continues
  an open span of type x (or, given tags from elsewhere that break the rule, starts one); ``O``
  closes the open span. A span runs from its first token's start to its last token's end
  (character offsets into the original text, end exclusive) and its value is that slice of the text.

Invariants: input is non-empty and at most MAX_TEXT_BYTES of UTF-8; the pipeline never logs or
puts the text into an error message; a ``TextPipeline`` is immutable after ``load`` and safe to
use from several threads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from agent.pipelines import BundleContractError, PipelineInputError
from agent.serving import LoadedModel

TASK = "text-nlu"
MAX_TEXT_BYTES = 4096
DEFAULT_MAX_SEQUENCE_LENGTH = 128
MAX_SEQUENCE_LENGTH = 4096
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
MAX_LABEL_FILE_BYTES = 1024 * 1024
MAX_LABELS = 10_000
DEFAULT_FILES = {
    "tokenizer_file": "tokenizer.json",
    "intent_labels_file": "intents.txt",
    "slot_labels_file": "slots.txt",
}
INPUTS = ("input_ids", "attention_mask")
INTENT_OUTPUT = "intent_logits"
SLOT_OUTPUT = "slot_logits"


@dataclass(frozen=True)
class Slot:
    slot: str
    value: str
    start: int  # character offset into the input text
    end: int  # exclusive


class Understanding(NamedTuple):
    intent: str
    confidence: float
    slots: list[Slot]
    latency_ms: float  # the whole pipeline: tokenize, run, decode
    tokens: int  # the sequence length fed to the model, special tokens included


def check_text(text: str) -> None:
    """Raises PipelineInputError for an empty text or one over MAX_TEXT_BYTES of UTF-8."""
    if not text:
        raise PipelineInputError("text is empty")
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise PipelineInputError(f"text of {size} bytes is over the {MAX_TEXT_BYTES} byte limit")


def word_starts(offsets: list[tuple[int, int]], text: str) -> list[int]:
    """Indices of the tokens that start a word (the others continue one; see the module contract)."""
    starts = []
    previous_end = None
    for index, (start, end) in enumerate(offsets):
        if not _continues_word(start, previous_end, text):
            starts.append(index)
        previous_end = end
    return starts


def _continues_word(start: int, previous_end: int | None, text: str) -> bool:
    return start == previous_end and 0 < start < len(text) and text[start - 1].isalnum() and text[start].isalnum()


class BioDecoder:
    """The most probable valid BIO tag sequence from per-position slot scores; pure and immutable.

    Valid: ``I-x`` only right after ``B-x`` or ``I-x``, never first. ``O`` (index 0, checked at load)
    is allowed everywhere, so a valid sequence always exists.
    """

    def __init__(self, tags: tuple[str, ...]) -> None:
        self.tags = tags
        n = len(tags)
        allowed = np.ones((n, n), dtype=bool)  # [previous, next]
        first = np.ones(n, dtype=bool)
        for j, tag in enumerate(tags):
            prefix, _, kind = tag.partition("-")
            if prefix == "I":
                first[j] = False
                allowed[:, j] = [t in (f"B-{kind}", f"I-{kind}") for t in tags]
        self._allowed = allowed
        self._first = first
        self._transition = np.where(allowed, 0.0, -np.inf)
        self._first_score = np.where(first, 0.0, -np.inf)

    def best(self, scores: np.ndarray) -> list[int]:
        """Tag indices for ``scores`` [positions, tags] (logits): argmax where valid, else Viterbi."""
        if len(scores) == 0:
            return []
        greedy = scores.argmax(axis=-1)
        if self._first[greedy[0]] and self._allowed[greedy[:-1], greedy[1:]].all():
            return greedy.tolist()
        shifted = scores - scores.max(axis=-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        total = self._first_score + log_p[0]
        back = np.zeros(log_p.shape, dtype=np.int64)
        for t in range(1, len(log_p)):
            candidates = total[:, None] + self._transition
            back[t] = candidates.argmax(axis=0)
            total = candidates.max(axis=0) + log_p[t]
        path = [int(total.argmax())]
        for t in range(len(log_p) - 1, 0, -1):
            path.append(int(back[t, path[-1]]))
        return path[::-1]

    def slots(self, scores: np.ndarray, offsets: list[tuple[int, int]], text: str) -> list[Slot]:
        """Slots of ``text`` from per-token ``scores`` [tokens, tags] and the tokens' character spans
        (special and empty tokens already left out)."""
        starts = word_starts(offsets, text)
        tags = ["O"] * len(offsets)  # a word's later tokens: their tags are not read
        for index, tag in zip(starts, self.best(np.asarray(scores)[starts]), strict=True):
            tags[index] = self.tags[tag]
        return decode_bio(tags, offsets, text)


def decode_bio(tags: list[str], offsets: list[tuple[int, int]], text: str) -> list[Slot]:
    """BIO tags per token (with each token's character span) to slots; pure, see the module contract."""
    slots: list[Slot] = []
    open_span: list = []  # [slot type, start, end] or empty

    def close() -> None:
        if open_span:
            kind, start, end = open_span
            slots.append(Slot(kind, text[start:end], start, end))
            open_span.clear()

    previous_end = None
    for tag, (start, end) in zip(tags, offsets, strict=True):
        continues_word = _continues_word(start, previous_end, text)
        previous_end = end
        if continues_word:  # the word's first token decided: extend its span, if it is in one
            if open_span and open_span[2] == start:
                open_span[2] = end
            continue
        prefix, _, kind = tag.partition("-")
        if prefix == "I" and open_span and open_span[0] == kind:
            open_span[2] = end
        elif prefix in ("B", "I"):
            close()
            open_span.extend([kind, start, end])
        else:
            close()
    close()
    return slots


def _lowercase_keeping_offsets(text: str) -> str:
    # str.lower() can change the length ("İ" becomes two characters); keep such characters as they
    # are so the tokenizer's character offsets stay offsets into the original text.
    return "".join(low if len(low := c.lower()) == 1 else c for c in text)


def _bundle_path(directory: Path, rel: str, what: str) -> Path:
    if not rel or rel.startswith("/") or "\\" in rel or ".." in rel.split("/"):
        raise BundleContractError(f"{what} path {rel!r} must be relative inside the bundle")
    path = directory / rel
    try:
        resolved = path.resolve(strict=True)
    except OSError as exc:
        raise BundleContractError(f"{what} {rel!r} is missing from the bundle") from exc
    if not resolved.is_relative_to(directory.resolve()) or not resolved.is_file():
        raise BundleContractError(f"{what} {rel!r} is not a file inside the bundle")
    return resolved


def _read_labels(path: Path, what: str) -> tuple[str, ...]:
    if path.stat().st_size > MAX_LABEL_FILE_BYTES:
        raise BundleContractError(f"{what} is over {MAX_LABEL_FILE_BYTES} bytes")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise BundleContractError(f"{what} is not UTF-8") from exc
    labels = tuple(line.strip() for line in lines)
    if not labels or len(labels) > MAX_LABELS:
        raise BundleContractError(f"{what} must hold 1 to {MAX_LABELS} labels, it holds {len(labels)}")
    if "" in labels:
        raise BundleContractError(f"{what} has an empty line {labels.index('') + 1}")
    if len(set(labels)) != len(labels):
        raise BundleContractError(f"{what} repeats a label")
    return labels


def _check_slot_tags(tags: tuple[str, ...]) -> None:
    if tags[0] != "O":
        raise BundleContractError(f"slot labels must start with 'O', not {tags[0]!r}")
    for tag in tags[1:]:
        prefix, dash, kind = tag.partition("-")
        if prefix not in ("B", "I") or not dash or not kind:
            raise BundleContractError(f"slot label {tag!r} is not a BIO tag (O, B-<slot> or I-<slot>)")


def _check_model(session, n_intents: int, n_slots: int) -> None:
    inputs = {i.name for i in session.get_inputs()}
    if inputs != set(INPUTS):
        raise BundleContractError(f"a text-nlu model takes inputs {list(INPUTS)}, this one takes {sorted(inputs)}")
    outputs = {o.name: o.shape for o in session.get_outputs()}
    for name, rank, count, labels in ((INTENT_OUTPUT, 2, n_intents, "intent"), (SLOT_OUTPUT, 3, n_slots, "slot")):
        if name not in outputs:
            raise BundleContractError(f"a text-nlu model has an output {name!r}; this one has {sorted(outputs)}")
        shape = outputs[name]
        if shape is not None and len(shape) != rank:
            raise BundleContractError(f"output {name!r} has shape {shape}, expected rank {rank}")
        last = shape[-1] if shape else None
        if isinstance(last, int) and last != count:
            raise BundleContractError(
                f"output {name!r} has {last} classes but the bundle lists {count} {labels} labels"
            )


class TextPipeline:
    """Tokenizer, labels and model of one activated text-nlu build."""

    def __init__(self, loaded: LoadedModel, tokenizer, intents: tuple[str, ...], slot_tags: tuple[str, ...],
                 lowercase: bool) -> None:  # fmt: skip
        self.loaded = loaded
        self.tokenizer = tokenizer
        self.intents = intents
        self.slot_tags = slot_tags
        self.decoder = BioDecoder(slot_tags)
        self.lowercase = lowercase
        self.recent_latency_ms = float("inf")  # unknown until the first call: assume slow
        self._intent_index = loaded.output_names.index(INTENT_OUTPUT)
        self._slot_index = loaded.output_names.index(SLOT_OUTPUT)

    @classmethod
    def load(cls, loaded: LoadedModel) -> TextPipeline:
        """Load and check what the build ships besides the model.

        Raises BundleContractError naming the first thing that breaks the module's contract.
        """
        from tokenizers import Tokenizer

        config = loaded.manifest.preprocessing.text
        files = {key: getattr(config, key) or default for key, default in DEFAULT_FILES.items()}
        max_length = config.max_sequence_length or DEFAULT_MAX_SEQUENCE_LENGTH
        if max_length > MAX_SEQUENCE_LENGTH:
            raise BundleContractError(f"max_sequence_length {max_length} is over {MAX_SEQUENCE_LENGTH}")
        tokenizer_path = _bundle_path(loaded.directory, files["tokenizer_file"], "tokenizer file")
        intents = _read_labels(_bundle_path(loaded.directory, files["intent_labels_file"], "intent labels"), "intents")
        tags = _read_labels(_bundle_path(loaded.directory, files["slot_labels_file"], "slot labels"), "slot labels")
        _check_slot_tags(tags)
        _check_model(loaded.session, len(intents), len(tags))
        if tokenizer_path.stat().st_size > MAX_TOKENIZER_BYTES:
            raise BundleContractError(f"tokenizer file is over {MAX_TOKENIZER_BYTES} bytes")
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=max_length)
        except Exception as exc:  # noqa: BLE001 - tokenizers raises bare Exception for a bad file
            raise BundleContractError(f"tokenizer file does not load: {str(exc)[:300]}") from exc
        return cls(loaded, tokenizer, intents, tags, config.lowercase)

    def understand(self, text: str) -> Understanding:
        """Intent, confidence and slots of one utterance.

        Raises PipelineInputError for an empty or oversized text, or one the model refuses.
        """
        started = time.perf_counter()
        check_text(text)
        encoding = self.tokenizer.encode(_lowercase_keeping_offsets(text) if self.lowercase else text)
        if not encoding.ids:
            raise PipelineInputError("text has no tokens")
        ids = np.asarray([encoding.ids], dtype=np.int64)
        try:
            outputs, _ = self.loaded.run({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types for bad inputs
            raise PipelineInputError(f"model rejected the input: {str(exc)[:300]}") from exc
        intent_logits = np.asarray(outputs[self._intent_index], dtype=np.float64).reshape(-1)
        slot_logits = np.asarray(outputs[self._slot_index])
        if intent_logits.shape != (len(self.intents),) or slot_logits.shape != (1, ids.shape[1], len(self.slot_tags)):
            raise PipelineInputError(
                f"model outputs have shapes {intent_logits.shape} and {slot_logits.shape}, "
                f"expected ({len(self.intents)},) and (1, {ids.shape[1]}, {len(self.slot_tags)})"
            )
        probabilities = np.exp(intent_logits - intent_logits.max())
        probabilities /= probabilities.sum()
        top = int(probabilities.argmax())
        offsets = encoding.offsets
        special = encoding.special_tokens_mask
        kept = [i for i, (start, end) in enumerate(offsets) if not special[i] and end > start]
        slots = self.decoder.slots(slot_logits[0][kept], [offsets[i] for i in kept], text)
        latency_ms = (time.perf_counter() - started) * 1000
        self.recent_latency_ms = latency_ms
        return Understanding(self.intents[top], float(probabilities[top]), slots, latency_ms, int(ids.shape[1]))


class TextPipelines:
    """The pipeline of the current text-nlu build, loaded once per activation and dropped on the next."""

    def __init__(self) -> None:
        self._current: TextPipeline | None = None
        self._guard = threading.Lock()

    def cached(self, loaded: LoadedModel) -> TextPipeline | None:
        with self._guard:
            current = self._current
        return current if current is not None and current.loaded is loaded else None

    def get(self, loaded: LoadedModel) -> TextPipeline:
        """The pipeline for this build, loading it on first use; raises BundleContractError."""
        pipeline = self.cached(loaded)
        if pipeline is None:
            pipeline = TextPipeline.load(loaded)
            with self._guard:
                self._current = pipeline
        return pipeline
