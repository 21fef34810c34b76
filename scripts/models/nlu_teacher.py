"""The distillation teacher: all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) fine-tuned jointly on intents and BIO slots.

The encoder is written out here (a plain post-LayerNorm BERT) and loaded from the package's
model.safetensors, read with numpy, so the build needs neither transformers nor network access.
Batches hold one sequence length each (see ``nlu_student.batches``), so there is no padding and
the attention needs no mask.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from scripts.models.data import SNIPS_INTENTS
from scripts.models.nlu_labels import IGNORE, TAGS, Encoded
from scripts.models.nlu_student import batches

HIDDEN = 384
HEADS = 12
LAYERS = 6
FFN = 1536
VOCAB = 30522
POSITIONS = 512
_DTYPES = {"F32": np.float32, "I64": np.int64}


@dataclass(frozen=True)
class TeacherConfig:
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 2e-4
    seed: int = 0


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    data = path.read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    base = 8 + header_size
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        array = np.frombuffer(data[base + start : base + end], dtype=_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        tensors[name] = torch.from_numpy(array.copy())
    return tensors


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
        self.attention_out = nn.Linear(HIDDEN, HIDDEN)
        self.attention_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.intermediate = nn.Linear(HIDDEN, FFN)
        self.out = nn.Linear(FFN, HIDDEN)
        self.out_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, HEADS, HIDDEN // HEADS).transpose(1, 2)

        attended = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)))
        attended = attended.transpose(1, 2).reshape(b, n, HIDDEN)
        x = self.attention_norm(x + self.dropout(self.attention_out(attended)))
        return self.out_norm(x + self.dropout(self.out(F.gelu(self.intermediate(x)))))


class Teacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(VOCAB, HIDDEN)
        self.positions = nn.Embedding(POSITIONS, HIDDEN)
        self.token_types = nn.Embedding(2, HIDDEN)
        self.embedding_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.dropout = nn.Dropout(0.1)
        self.intent_head = nn.Linear(HIDDEN, len(SNIPS_INTENTS))
        self.slot_head = nn.Linear(HIDDEN, len(TAGS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        x = self.words(input_ids) + self.positions(positions) + self.token_types.weight[0]
        x = self.dropout(self.embedding_norm(x))
        for layer in self.layers:
            x = layer(x)
        x = self.dropout(x)
        return self.intent_head(x[:, 0]), self.slot_head(x)

    def load_pretrained(self, path: Path) -> None:
        """Copy the BERT weights of all-MiniLM-L6-v2's model.safetensors; the heads stay freshly initialised."""
        weights = read_safetensors(path)
        names = {
            "words.weight": "embeddings.word_embeddings.weight",
            "positions.weight": "embeddings.position_embeddings.weight",
            "token_types.weight": "embeddings.token_type_embeddings.weight",
            "embedding_norm.weight": "embeddings.LayerNorm.weight",
            "embedding_norm.bias": "embeddings.LayerNorm.bias",
        }
        parts = {
            "query": "attention.self.query",
            "key": "attention.self.key",
            "value": "attention.self.value",
            "attention_out": "attention.output.dense",
            "attention_norm": "attention.output.LayerNorm",
            "intermediate": "intermediate.dense",
            "out": "output.dense",
            "out_norm": "output.LayerNorm",
        }
        for i in range(LAYERS):
            for ours, theirs in parts.items():
                for kind in ("weight", "bias"):
                    names[f"layers.{i}.{ours}.{kind}"] = f"encoder.layer.{i}.{theirs}.{kind}"
        state = {ours: weights[theirs] for ours, theirs in names.items()}
        missing, _ = self.load_state_dict(state, strict=False)
        assert set(missing) == {"intent_head.weight", "intent_head.bias", "slot_head.weight", "slot_head.bias"}


def train_teacher(encoded: Sequence[Encoded], weights: Path, config: TeacherConfig, *, log=print) -> Teacher:
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = Teacher()
    model.load_pretrained(weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    per_epoch = sum(1 for _ in batches(encoded, config.batch_size, None))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.learning_rate, total_steps=config.epochs * per_epoch, pct_start=0.1
    )
    for epoch in range(config.epochs):
        model.train()
        total = 0.0
        for step, (ids, _, intents, tags, chunk) in enumerate(batches(encoded, config.batch_size, rng)):
            intent_logits, slot_logits = model(ids)
            loss = F.cross_entropy(intent_logits, intents) + F.cross_entropy(
                slot_logits.reshape(-1, len(TAGS)), tags.reshape(-1), ignore_index=IGNORE
            )
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += loss.item() * len(chunk)
            if step % 50 == 0:
                log(f"teacher epoch {epoch + 1}/{config.epochs} step {step}/{per_epoch}: loss {loss.item():.4f}")
        log(f"teacher epoch {epoch + 1}/{config.epochs}: loss {total / len(encoded):.4f}")
    return model.eval()
