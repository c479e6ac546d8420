"""The same m-RNN in PyTorch eager mode: the speed reference of the benchmarks.

Same layers and sizes as :class:`mrnn_jax.model.MRNN` (embedding 128, word embedding II and
recurrent 256 with ReLU, multimodal 512 with 1.7159 tanh(2x/3), dropout on the multimodal
output, softmax over the vocabulary), the same cost (mean NLL per real word plus
``l2_weight * 0.5 * sum of squared weights``, biases excluded), global-norm clipping and Adam.
Written the way a PyTorch user writes it: each batch is cut to its own longest caption
(eager mode has no compile to pay for a new shape), ``torch.optim.Adam`` with its default
multi-tensor implementation, ``F.cross_entropy`` with ``ignore_index`` for padding.

torch is a test and benchmark dependency only; the library never imports this file.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

PAD_ID = 0  # mrnn_jax.text.vocab.PAD_ID (not imported: this file stands alone)


class TorchMRNN(nn.Module):
    """The m-RNN: ``forward(images [B, D], inputs [B, T]) -> logits [B, T, V]``."""

    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        embed_dim: int = 128,
        word_dim: int = 256,
        multimodal_dim: int = 512,
        dropout_rate: float = 0.5,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.word_dense = nn.Linear(embed_dim, word_dim)
        self.recurrent = nn.Linear(word_dim, word_dim, bias=False)
        self.multimodal_word = nn.Linear(word_dim, multimodal_dim)
        self.multimodal_recurrent = nn.Linear(word_dim, multimodal_dim, bias=False)
        self.multimodal_image = nn.Linear(feature_dim, multimodal_dim, bias=False)
        self.dropout = nn.Dropout(dropout_rate)
        self.softmax = nn.Linear(multimodal_dim, vocab_size)

    def forward(self, images: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Next-word logits for every position of ``inputs``."""
        w = F.relu(self.word_dense(self.embedding(inputs)))  # [B, T, D]
        r_t = torch.zeros_like(w[:, 0])
        states = []
        for t in range(w.shape[1]):
            r_t = F.relu(self.recurrent(r_t) + w[:, t])
            states.append(r_t)
        r = torch.stack(states, dim=1)
        pre = self.multimodal_word(w) + self.multimodal_recurrent(r)
        pre = pre + self.multimodal_image(images)[:, None]
        m = self.dropout(1.7159 * torch.tanh(pre * (2.0 / 3.0)))
        return self.softmax(m)


class TorchTrainer:
    """One optimiser step at a time on numpy batches ``{"image", "tokens"}`` (as the JAX
    pipeline makes them: start token, words, end token, padding), with the model on
    ``device`` ("cpu", "cuda")."""

    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        *,
        learning_rate: float = 1e-3,
        grad_clip_norm: float = 5.0,
        l2_weight: float = 1e-6,
        dropout_rate: float = 0.5,
        threads: int | None = None,
        seed: int = 0,
        device: str = "cpu",
    ):
        torch.set_num_threads(threads or os.cpu_count() or 1)
        torch.manual_seed(seed)
        self.device = device
        self.model = TorchMRNN(vocab_size, feature_dim, dropout_rate=dropout_rate).to(device)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.weights = [p for n, p in self.model.named_parameters() if not n.endswith("bias")]
        self.grad_clip_norm = grad_clip_norm
        self.l2_weight = l2_weight

    def step(self, batch: dict) -> float:
        """One step: forward, backward, clip, Adam. Returns the loss."""
        return self.step_placed(self.place(batch))

    def place(self, batch: dict) -> tuple:
        """A numpy batch as tensors on the trainer's device: ``(images, tokens)``, the tokens
        cut to the batch's longest caption."""
        tokens = batch["tokens"]
        width = int((tokens != PAD_ID).sum(axis=1).max())  # this batch's longest caption
        tokens = torch.from_numpy(tokens[:, :width].astype(np.int64)).to(self.device)
        return torch.from_numpy(np.asarray(batch["image"])).to(self.device), tokens

    def step_placed(self, placed: tuple) -> float:
        """:meth:`step` on a batch :meth:`place` put on the device already."""
        images, tokens = placed
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = self.model(images, inputs)
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=PAD_ID
        )
        l2 = 0.5 * sum(torch.sum(w * w) for w in self.weights)
        loss = nll + self.l2_weight * l2
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        self.optimizer.step()
        return loss.item()
