"""The same m-RNN in PyTorch eager mode: the speed reference of the benchmarks.

Same layers and sizes as :class:`mrnn_jax.model.MRNN` (embedding 128, word embedding II and
recurrent 256 with ReLU, multimodal 512 with 1.7159 tanh(2x/3), dropout on the multimodal
output, softmax over the vocabulary), the same cost (mean NLL per real word plus
``l2_weight * 0.5 * sum of squared weights``, biases excluded), global-norm clipping and Adam.
Written the way a PyTorch user writes it: each batch is cut to its own longest caption
(eager mode has no compile to pay for a new shape), ``torch.optim.Adam`` with its default
multi-tensor implementation, ``F.cross_entropy`` with ``ignore_index`` for padding.

:class:`TorchScst` is the self-critical (SCST) step written the way ruotianluo's
self-critical.pytorch does it, with its CIDEr-D reward from ``experiments/cider_d.py`` (which
must be importable: run from ``experiments/`` or with it on ``sys.path``, as the benchmark
scripts are).

torch is a test and benchmark dependency only; the library never imports this file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

PAD_ID = 0  # mrnn_jax.text.vocab's ids (not imported: this file stands alone)
START_ID = 1
END_ID = 2


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

    def project_image(self, images: torch.Tensor) -> torch.Tensor:
        """V_I I for each image: ``[B, D] -> [B, M]`` (once per image while decoding)."""
        return self.multimodal_image(images)

    def step(
        self, tokens: torch.Tensor, r_prev: torch.Tensor, image_projection: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding step: ``(tokens [N], r(t-1) [N, R], V_I I [N, M]) -> (logits [N, V],
        r(t))``; the same arithmetic as one position of :meth:`forward`."""
        w = F.relu(self.word_dense(self.embedding(tokens)))
        r = F.relu(self.recurrent(r_prev) + w)
        pre = self.multimodal_word(w) + self.multimodal_recurrent(r) + image_projection
        m = self.dropout(1.7159 * torch.tanh(pre * (2.0 / 3.0)))
        return self.softmax(m), r


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


def mean_of_others(rewards: np.ndarray) -> np.ndarray:
    """Each sample's baseline in "new self-critical": the mean reward of the other samples of
    its image. ``rewards [B, n] -> [B, n]``, n >= 2."""
    n = rewards.shape[1]
    if n < 2:
        raise ValueError(f"the mean of the others needs at least 2 samples per image, not {n}")
    return (rewards.sum(axis=1, keepdims=True) - rewards) / (n - 1)


def scst_loss(log_probs: torch.Tensor, mask: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """self-critical.pytorch's ``RewardCriterion``: ``-sum(advantage * log_probs * mask) /
    sum(mask)`` over the sampled tokens ``log_probs [N, T]`` (``mask [N, T]`` 1 up to and
    including each caption's end token), ``advantage [N]`` one value per sample."""
    return -(advantage[:, None] * log_probs * mask).sum() / mask.sum()


class TorchScst:
    """One self-critical step at a time, the self-critical.pytorch way, on numpy batches
    ``{"image": features [B, D], "image_id": [B]}`` (``image_id`` indexes ``references``).

    Each image is expanded to ``samples`` captions (its V_I I computed once, then repeated,
    as self-critical.pytorch's ``seq_per_img``); they are sampled in a Python loop over time
    steps (``torch.multinomial`` on the softmax, padding and the start token excluded) with
    autograd on, so the sampled tokens' log-probabilities keep their graph (its ``mode=
    'sample'``; the model stays in training mode, dropout included, as there). A caption has
    at most ``max_words`` words and then the end token if sampled (the library's decoding
    convention); the loop stops once every caption has ended. The captions are decoded to
    words and each is scored with CIDEr-D (:class:`cider_d.CiderD`, document frequencies
    counted once over all of ``references``, the training set) against its image's
    references; the baseline is the mean reward of the image's other samples ("new
    self-critical"); the loss is :func:`scst_loss`; then backward, global-norm clipping, Adam.
    ``vocabulary[i]`` is the word of id ``i`` (0 padding, 1 start, 2 end, as the library's).
    """

    def __init__(
        self,
        feature_dim: int,
        vocabulary: Sequence[str],
        references: Sequence[Sequence[str]],
        *,
        samples: int = 5,
        max_words: int = 16,
        learning_rate: float = 5e-5,
        grad_clip_norm: float = 5.0,
        embed_dim: int = 128,
        word_dim: int = 256,
        multimodal_dim: int = 512,
        dropout_rate: float = 0.5,
        threads: int | None = None,
        seed: int = 0,
        device: str = "cpu",
    ):
        """The model (TorchMRNN of these sizes, ``len(vocabulary)`` words), its Adam, and the
        CIDEr-D scorer with the document frequencies of ``references``."""
        from cider_d import CiderD  # beside this file (see the module docstring)

        if samples < 2:
            raise ValueError(f"new self-critical needs at least 2 samples per image, not {samples}")
        torch.set_num_threads(threads or os.cpu_count() or 1)
        torch.manual_seed(seed)
        self.device = device
        self.vocabulary = list(vocabulary)
        self.references = references
        self.samples = samples
        self.max_words = max_words
        self.grad_clip_norm = grad_clip_norm
        self.model = TorchMRNN(
            len(self.vocabulary), feature_dim, embed_dim, word_dim, multimodal_dim, dropout_rate
        ).to(device)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.scorer = CiderD.from_references(references)
        self.word_dim = word_dim
        self.never_sampled = torch.zeros(len(self.vocabulary), dtype=torch.bool, device=device)
        self.never_sampled[[PAD_ID, START_ID]] = True

    def step(self, batch: dict) -> dict:
        """One step: sample, reward, backward, clip, Adam. Returns :meth:`step_placed`'s."""
        return self.step_placed(self.place(batch))

    def place(self, batch: dict) -> tuple:
        """A numpy batch as ``(images on the device, image ids as a numpy array)``."""
        images = torch.from_numpy(np.asarray(batch["image"], np.float32)).to(self.device)
        return images, np.asarray(batch["image_id"])

    def sample(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``samples`` captions per image, image-major: ``(tokens [B*n, T], log_probs [B*n,
        T], mask [B*n, T])``, T <= max_words + 1. ``tokens`` hold the words, then the end
        token if sampled, then padding; ``log_probs`` (with autograd) are the sampled tokens'
        log-probabilities; ``mask`` is 1 over the words and the end token."""
        projection = self.model.project_image(images).repeat_interleave(self.samples, dim=0)
        rows = projection.shape[0]
        previous = torch.full((rows,), START_ID, dtype=torch.long, device=self.device)
        r = projection.new_zeros((rows, self.word_dim))
        alive = torch.ones(rows, dtype=torch.bool, device=self.device)
        tokens, log_probs, masks = [], [], []
        for t in range(self.max_words + 1):
            logits, r = self.model.step(previous, r, projection)
            log_prob = F.log_softmax(logits, dim=-1)
            weights = log_prob.detach().exp().masked_fill(self.never_sampled, 0.0)
            word = torch.multinomial(weights, 1)[:, 0]
            # After max_words words only the end token may still be emitted.
            kept = alive & (word == END_ID) if t == self.max_words else alive
            tokens.append(torch.where(kept, word, PAD_ID))
            log_probs.append(log_prob.gather(1, word[:, None])[:, 0])
            masks.append(kept)
            alive = alive & (word != END_ID)
            if not bool(alive.any()):
                break
            previous = word
        mask = torch.stack(masks, dim=1).to(log_probs[0].dtype)
        return torch.stack(tokens, dim=1), torch.stack(log_probs, dim=1), mask

    def decode(self, tokens: np.ndarray) -> list[str]:
        """Each row's words up to its end token (or padding), joined by spaces."""
        captions = []
        for row in tokens.tolist():
            words = []
            for token in row:
                if token in (END_ID, PAD_ID):
                    break
                words.append(self.vocabulary[token])
            captions.append(" ".join(words))
        return captions

    def rewards(self, tokens: np.ndarray, image_ids: np.ndarray) -> tuple[list[str], np.ndarray]:
        """The decoded captions and their CIDEr-D rewards ``[B, n]`` against their images'
        references (``tokens`` image-major, as :meth:`sample` makes them)."""
        captions = self.decode(tokens)
        scores = [
            self.scorer.score(caption, self.references[image_ids[i // self.samples]])
            for i, caption in enumerate(captions)
        ]
        return captions, np.array(scores, np.float64).reshape(len(image_ids), self.samples)

    def step_placed(self, placed: tuple) -> dict:
        """:meth:`step` on a batch :meth:`place` made. Returns ``loss``, ``reward`` and
        ``baseline`` (means over the samples), ``reward_seconds`` (decoding, CIDEr-D and the
        baseline, on the host), ``steps`` (time steps sampled), and per sample ``rewards
        [B, n]`` and ``captions`` (image-major)."""
        images, image_ids = placed
        tokens, log_probs, mask = self.sample(images)
        tokens = tokens.cpu().numpy()
        start = time.perf_counter()
        captions, rewards = self.rewards(tokens, image_ids)
        baseline = mean_of_others(rewards)
        reward_seconds = time.perf_counter() - start
        advantage = torch.from_numpy((rewards - baseline).reshape(-1))
        loss = scst_loss(log_probs, mask, advantage.to(log_probs.device, log_probs.dtype))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        self.optimizer.step()
        return {
            "loss": loss.item(),
            "reward": float(rewards.mean()),
            "baseline": float(baseline.mean()),
            "reward_seconds": reward_seconds,
            "steps": int(tokens.shape[1]),
            "rewards": rewards,
            "captions": captions,
        }
