"""The small joint intent + slot student: a compact embedding over the teacher's vocabulary, convs and a BiGRU.

The student takes the teacher's token ids (so it ships the teacher's tokenizer.json unchanged)
and maps them in-graph, through a fixed lookup table, onto a compact vocabulary: the tokens
seen at least ``MIN_TOKEN_COUNT`` times in the training split, everything else to [UNK]. That
keeps the embedding a few hundred kilobytes instead of 30,522 rows. Its rows start as the top
principal components of the teacher's own word embeddings of those tokens (``teacher_embeddings``;
0.879 -> 0.908 validation slot F1 over a random start), then train with the rest.
The encoder is residual 1-D convolutions and one residual BiGRU layer over them. Intent logits
come from the mean of the encoder states over the attention mask, slot logits from every state.
Training is deterministic for a seed; distillation adds a KL term towards soft teacher
distributions at temperature ``TEMPERATURE`` when they are given.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from scripts.models.data import SNIPS_INTENTS
from scripts.models.nlu_labels import IGNORE, TAGS, Encoded

UNK_ID = 100  # the teacher vocabulary's [UNK]
TEACHER_VOCAB = 30522
MIN_TOKEN_COUNT = 2
TEMPERATURE = 2.0


@dataclass(frozen=True)
class StudentConfig:
    embedding_dim: int = 96
    hidden: int = 64  # channels are 2 * hidden
    layers: int = 3
    kernel: int = 5
    dropout: float = 0.25
    word_dropout: float = 0.05  # tokens replaced by [UNK] in training, so unseen words are handled
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0
    teacher_embeddings: bool = True  # start the embedding from a PCA of the teacher's word embeddings
    augment: int = 0  # copies of the training utterances with swapped slot values (build_nlu adds them)


def compact_vocabulary(encoded: Sequence[Encoded]) -> np.ndarray:
    """Teacher id -> compact id (int64 [TEACHER_VOCAB]); 0 is [UNK], rare and unseen tokens map to it."""
    counts = Counter(i for e in encoded for i in e.ids)
    kept = sorted(i for i, n in counts.items() if n >= MIN_TOKEN_COUNT and i != UNK_ID)
    table = np.zeros(TEACHER_VOCAB, dtype=np.int64)
    table[kept] = np.arange(1, len(kept) + 1)
    return table


def teacher_embedding_init(table: np.ndarray, teacher_words: np.ndarray, dim: int) -> torch.Tensor:
    """Rows for the compact vocabulary: the teacher's word embeddings of its tokens ([UNK] for row 0),
    projected on their top ``dim`` principal components and scaled to unit variance like nn.Embedding's."""
    rows = np.zeros(int(table.max()) + 1, dtype=np.int64)
    rows[table[table > 0]] = np.nonzero(table > 0)[0]
    rows[0] = UNK_ID
    vectors = teacher_words[rows].astype(np.float64)
    vectors -= vectors.mean(0)
    _, _, components = np.linalg.svd(vectors, full_matrices=False)
    projected = vectors @ components[:dim].T
    return torch.from_numpy((projected / projected.std()).astype(np.float32))


class Student(nn.Module):
    def __init__(self, table: np.ndarray, config: StudentConfig, embedding_init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("table", torch.from_numpy(table))
        self.embedding = nn.Embedding(int(table.max()) + 1, config.embedding_dim)
        if embedding_init is not None:
            self.embedding.weight.data.copy_(embedding_init)
        self.project = nn.Linear(config.embedding_dim, 2 * config.hidden)
        self.convs = nn.ModuleList(
            nn.Conv1d(2 * config.hidden, 2 * config.hidden, config.kernel, padding=config.kernel // 2)
            for _ in range(config.layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(2 * config.hidden) for _ in range(config.layers))
        self.recurrent = nn.GRU(2 * config.hidden, config.hidden, bidirectional=True, batch_first=True)
        self.recurrent_norm = nn.LayerNorm(2 * config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.intent_head = nn.Linear(2 * config.hidden, len(SNIPS_INTENTS))
        self.slot_head = nn.Linear(2 * config.hidden, len(TAGS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        x = self.dropout(self.embedding(self.table[input_ids]))
        states = self.project(x)  # rows are unpadded: the contract feeds the real length
        for conv, norm in zip(self.convs, self.norms, strict=True):
            states = norm(states + self.dropout(F.gelu(conv(states.transpose(1, 2)).transpose(1, 2))))
        states = self.recurrent_norm(states + self.dropout(self.recurrent(states)[0]))
        states = self.dropout(states)
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.intent_head(pooled), self.slot_head(states)


def batches(encoded: Sequence[Encoded], batch_size: int, rng: random.Random | None):
    """(ids, mask, intents, tags, indices) tensors, each batch of one sequence length (no padding,
    so the backward GRU never reads pad tokens); batches shuffled when rng is given."""
    by_length: dict[int, list[int]] = {}
    for i, e in enumerate(encoded):
        by_length.setdefault(len(e.ids), []).append(i)
    chunks = []
    for indices in by_length.values():
        if rng is not None:
            rng.shuffle(indices)
        chunks += [indices[k : k + batch_size] for k in range(0, len(indices), batch_size)]
    if rng is not None:
        rng.shuffle(chunks)
    for chunk in chunks:
        ids = torch.tensor([encoded[i].ids for i in chunk])
        tags = torch.tensor([encoded[i].tags for i in chunk])
        intents = torch.tensor([encoded[i].intent for i in chunk])
        yield ids, torch.ones_like(ids), intents, tags, chunk


def train_student(
    encoded: Sequence[Encoded],
    config: StudentConfig,
    *,
    soft: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    teacher_words: np.ndarray | None = None,
    vocabulary: Sequence[Encoded] | None = None,
    log=print,
) -> Student:
    """Train on the labels, plus KL towards soft (intent logits, slot logits) per utterance when given.

    ``teacher_words`` (the teacher's word embeddings) is needed with ``config.teacher_embeddings``;
    the compact vocabulary is counted on ``vocabulary`` (default ``encoded``), so augmented copies
    of the training utterances need not change it.
    """
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    table = compact_vocabulary(vocabulary if vocabulary is not None else encoded)
    init = None
    if config.teacher_embeddings:
        if teacher_words is None:
            raise ValueError("teacher_embeddings needs the teacher's word embeddings")
        init = teacher_embedding_init(table, teacher_words, config.embedding_dim)
    model = Student(table, config, init)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    steps = config.epochs * sum(1 for _ in batches(encoded, config.batch_size, None))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate, total_steps=steps)
    for epoch in range(config.epochs):
        model.train()
        total = 0.0
        for ids, mask, intents, tags, chunk in batches(encoded, config.batch_size, rng):
            drop = (torch.rand(ids.shape) < config.word_dropout) & (tags != IGNORE)
            intent_logits, slot_logits = model(ids.masked_fill(drop, UNK_ID), mask)
            loss = F.cross_entropy(intent_logits, intents) + F.cross_entropy(
                slot_logits.reshape(-1, len(TAGS)), tags.reshape(-1), ignore_index=IGNORE
            )
            if soft is not None:
                loss = 0.5 * loss + 0.5 * distillation_loss(intent_logits, slot_logits, tags, [soft[i] for i in chunk])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += loss.item() * len(chunk)
        log(f"student epoch {epoch + 1}/{config.epochs}: loss {total / len(encoded):.4f}")
    return model.eval()


def distillation_loss(intent_logits, slot_logits, tags, soft) -> torch.Tensor:
    """KL(teacher || student) at TEMPERATURE, scaled by T^2, over intents and decodable tokens."""
    t = TEMPERATURE
    teacher_intent = torch.from_numpy(np.stack([s[0] for s in soft]))
    teacher_slots = torch.zeros_like(slot_logits)
    for row, (_, slots) in enumerate(soft):
        teacher_slots[row, : slots.shape[0]] = torch.from_numpy(slots)
    intent_kl = F.kl_div(
        F.log_softmax(intent_logits / t, -1), F.log_softmax(teacher_intent / t, -1), log_target=True,
        reduction="batchmean",
    )  # fmt: skip
    keep = tags != IGNORE
    slot_kl = F.kl_div(
        F.log_softmax(slot_logits[keep] / t, -1), F.log_softmax(teacher_slots[keep] / t, -1), log_target=True,
        reduction="batchmean",
    )  # fmt: skip
    return (intent_kl + slot_kl) * t * t


@torch.no_grad()
def predict(model: nn.Module, encoded: Sequence[Encoded], batch_size: int = 128):
    """(intent ids [n], slot logits [tokens, tags] per utterance, (intent logits, slot logits) per utterance)."""
    model.eval()
    intents = np.zeros(len(encoded), dtype=np.int64)
    logits: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * len(encoded)
    for ids, mask, _, _, chunk in batches(encoded, batch_size, None):
        intent_logits, slot_logits = model(ids, mask)
        for row, i in enumerate(chunk):
            n = ids.shape[1]
            intents[i] = int(intent_logits[row].argmax())
            logits[i] = (intent_logits[row].numpy().copy(), slot_logits[row, :n].numpy().copy())
    return intents, [slots for _, slots in logits], logits
