"""Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020), as the authors' RepDistiller
computes it (crd/criterion.py, crd/memory.py) with the paper's defaults.

The student's and the teacher's pooled features are embedded (a linear head each, then L2-normalized) in a
`crd_dim`-dimensional space. Two memory banks hold one embedding per training image: the student's and the
teacher's, each row a momentum average of that image's embeddings (rows start uniform in +-1/sqrt(dim/3)).
For every image, the positive is its own row and `crd_negatives` negatives are rows of images of OTHER
classes (RepDistiller's "exact" mode). With the teacher as anchor, the student bank is scored, and vice
versa (two symmetric terms): P(i, j) = exp(embed . bank[j] / tau) / Z, Z fixed on the first batch as
mean(exp(...)) * N. Each term is NCE with the noise distribution uniform over the N images (Pn = 1/N):

    loss = -[log P_pos / (P_pos + K Pn) + sum_negatives log K Pn / (P_neg + K Pn)] averaged over the batch,
    total = CE + crd_weight * (student-anchored term + teacher-anchored term).

After the loss the banks take this batch's embeddings (bank = m bank + (1 - m) embed, renormalized). Under
torchrun every process applies every process's rows, so the banks stay the same everywhere. The negatives
come from the step's own random stream (`Batch.generator`), drawn for the whole global batch, so a run draws
the same ones in any group, after a resume and on any number of processes; the banks and Z are buffers of the method's modules, saved in last.pt and restored with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distill.methods import register
from distill.methods.base import F, Method, nn, torch
from distill.front.options import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Range, opt

EPS = 1e-7  # RepDistiller's guard in the NCE ratios


@register
class CRD(Method):
    name = "crd"
    summary = "Tian et al. 2020: contrast each image's embeddings against other classes' in memory banks"
    needs_features = True
    draws = True

    @dataclass
    class Options:
        crd_weight: float = opt(0.8, "Weight of the contrastive loss; CE keeps weight 1 (RepDistiller's and "
                                     "mdistiller's CIFAR value).", within=NON_NEGATIVE)
        crd_dim: int = opt(128, "Dimension of the embedding space and of the memory banks' rows (the paper's 128).",
                           within=AT_LEAST_1)
        crd_negatives: int = opt(16384, "Negatives per image, drawn from other classes (the paper's 16384).",
                                 within=AT_LEAST_1)
        nce_temperature: float = opt(0.07, "Temperature tau of the contrastive scores (the paper's 0.07).",
                                     within=POSITIVE, symbol="τ")
        bank_momentum: float = opt(0.5, "Momentum of the memory banks' rows: row = m row + (1 - m) embedding "
                                        "(the paper's 0.5).", within=Range(0, 1, high_open=True))

    def setup(self, student, teacher, data):
        self.gather = data.gather or (lambda t: t)
        self.own_rows = data.own_rows or (lambda t: t)
        self.z_known = None  # which Z is set, read from the buffer once (it may come from a checkpoint)
        self.modules = contrast_heads(student.features[-1].shape[1], teacher.features[-1].shape[1],
                                      self.options.crd_dim, data.labels)
        return self.modules

    def loss(self, student, teacher, batch):
        o, heads = self.options, self.modules
        v_s = F.normalize(heads.embed_s(student.features[-1].flatten(1)), dim=1)
        v_t = F.normalize(heads.embed_t(teacher.features[-1].flatten(1)), dim=1)
        # Negatives drawn for the whole global batch, then this process's rows: every process draws its own
        # (one seeded stream each would give them all the same), and N processes draw what one process would.
        rows = self.own_rows(contrast_rows(heads, self.gather(batch.indices), o.crd_negatives, batch.generator))
        # Teacher as anchor against the student's bank, and the student as anchor against the teacher's.
        p_t = self.scores(v_t, heads.bank_s, rows, slot=0)
        p_s = self.scores(v_s, heads.bank_t, rows, slot=1)
        contrast = nce_loss(p_t, len(heads.labels)) + nce_loss(p_s, len(heads.labels))
        update_banks(heads, batch.indices, v_s.detach(), v_t.detach(), o.bank_momentum, self.gather)
        ce = self.ce(student.logits, batch.targets)
        return ce + o.crd_weight * contrast, {"ce": ce, "crd": contrast}

    def scores(self, anchor, bank, rows, slot: int):
        """P = exp(anchor . bank[rows] / tau) / Z, Z set on the first batch (mean over every process's)."""
        heads = self.modules
        weights = bank[rows]  # (B, 1 + k, dim), no gradient: the bank is a buffer
        p = torch.bmm(weights, anchor.unsqueeze(2)).squeeze(2).div(self.options.nce_temperature).exp()
        if self.z_known is None:  # one read of the buffer; from then on the host knows, and never waits
            self.z_known = [z >= 0 for z in heads.z.tolist()]
        if not self.z_known[slot]:
            heads.z[slot] = self.gather(p.mean().detach().reshape(1)).mean() * len(heads.labels)
            self.z_known[slot] = True
        return p / heads.z[slot].clone()  # a copy: the buffer changes in place later in the step


def nce_loss(p, n_data: int):
    """RepDistiller's ContrastLoss (paper eq. 18): column 0 the positive, the rest negatives; noise Pn = 1/N."""
    k, noise = p.shape[1] - 1, 1.0 / n_data
    log_d1 = (p[:, 0] / (p[:, 0] + k * noise + EPS)).log()
    log_d0 = ((k * noise) / (p[:, 1:] + k * noise + EPS)).log()
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


def contrast_heads(student_dim: int, teacher_dim: int, dim: int, labels):
    """The embedding heads (trained: RepDistiller's Embed, a linear map before the L2 normalization) and the two
    memory banks with their normalization constants (buffers: checkpointed, not trained), in one module."""
    heads = nn.Module()
    heads.embed_s, heads.embed_t = nn.Linear(student_dim, dim), nn.Linear(teacher_dim, dim)
    device, bound = labels.device, 1.0 / math.sqrt(dim / 3)
    for name in ("bank_s", "bank_t"):
        heads.register_buffer(name, torch.rand(len(labels), dim, device=device) * 2 * bound - bound)
    heads.register_buffer("z", torch.full((2,), -1.0, device=device))  # unset until the first batch
    # Images sorted by class: the negatives of class c are drawn from the positions outside its run.
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
    for name, value in (("order", torch.argsort(labels, stable=True)), ("starts", torch.cumsum(counts, 0) - counts),
                        ("counts", counts), ("labels", labels)):
        heads.register_buffer(name, value, persistent=False)  # derived from the data: not saved
    return heads


def contrast_rows(heads, indices, k: int, generator):
    """(B, 1 + k): each image's own row, then k rows of images of other classes, uniformly."""
    size, y = len(heads.labels), heads.labels[indices]
    start, count = heads.starts[y].unsqueeze(1), heads.counts[y].unsqueeze(1)
    u = (torch.rand(len(indices), k, device=indices.device, generator=generator) * (size - count)).long()
    u = torch.minimum(u, size - count - 1)  # rand < 1, but float rounding could still reach the end
    negatives = heads.order[torch.where(u < start, u, u + count)]  # skip the image's own class
    return torch.cat([indices.unsqueeze(1), negatives], dim=1)


def update_banks(heads, indices, v_s, v_t, momentum: float, gather) -> None:
    """Every process's rows of this step, so the banks stay identical across processes."""
    indices, v_s, v_t = gather(indices), gather(v_s), gather(v_t)
    with torch.no_grad():
        for bank, v in ((heads.bank_s, v_s), (heads.bank_t, v_t)):
            row = bank[indices] * momentum + v * (1 - momentum)
            bank.index_copy_(0, indices, F.normalize(row, dim=1))
