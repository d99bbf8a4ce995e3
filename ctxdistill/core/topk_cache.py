"""An offline teacher on disk: the top-k token ids and log-probs at every completion position, memory-mapped.

Written once by one teacher pass (`build_topk_cache`), then read by every epoch instead of running the teacher
again. Layout of the folder: `ids.npy` (uint16 when the vocabulary fits, else int32) and `logp.npy` (float32), both
rows × k and sorted by descending log-prob, plus `meta.json` (k, temperature, vocabulary size, a fingerprint of
the teacher and data, and each pair's first row and length, keyed by a hash of its teacher view). Log-probs are
taken under the full-vocabulary softmax at the objective's temperature, so the tail mass is 1 − Σ exp(logp).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ctxdistill import CtxDistillError
from ctxdistill.core.objectives import TeacherTopK, project
from ctxdistill.core.pairs import Pair, completion_rows, pad_right


def pair_key(pair: Pair) -> str:
    data = np.asarray(pair.teacher_ids + [-1, pair.teacher_prompt_len], dtype=np.int64).tobytes()
    return hashlib.sha1(data).hexdigest()


class TopKWriter:
    """Streams rows into a temporary folder; `commit` renames it into place, so a killed run leaves no half cache."""

    def __init__(self, path: Path, n_rows: int, k: int, vocab_size: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.path.parent, prefix="." + self.path.name + "."))
        self.id_dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
        self.ids = np.lib.format.open_memmap(self.tmp / "ids.npy", mode="w+", dtype=self.id_dtype, shape=(n_rows, k))
        self.logp = np.lib.format.open_memmap(self.tmp / "logp.npy", mode="w+", dtype=np.float32, shape=(n_rows, k))
        self.k, self.vocab_size, self.row, self.index = k, vocab_size, 0, {}

    def add(self, key: str, ids: np.ndarray, logp: np.ndarray) -> None:
        n = ids.shape[0]
        self.ids[self.row:self.row + n] = ids.astype(self.id_dtype)
        self.logp[self.row:self.row + n] = logp.astype(np.float32)
        self.index[key] = [self.row, n]
        self.row += n

    def commit(self, temperature: float, fingerprint: str) -> "TopKCache":
        if self.row != self.ids.shape[0]:
            raise CtxDistillError(f"Internal error: the cache got {self.row} of {self.ids.shape[0]} rows.")
        self.ids.flush()
        self.logp.flush()
        del self.ids, self.logp
        meta = {"k": self.k, "temperature": temperature, "vocab_size": self.vocab_size, "rows": self.row,
                "fingerprint": fingerprint, "index": self.index}
        (self.tmp / "meta.json").write_text(json.dumps(meta))
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        return TopKCache(self.path)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


@torch.no_grad()
def build_topk_cache(path: Path, teacher, pairs: list[Pair], k: int, temperature: float, pad_id: int,
                     batch_size: int = 8, chunk_size: int = 256, fingerprint: str = "") -> "TopKCache":
    """Run the teacher once over `pairs` and write its top-k at every completion position."""
    vocab = teacher.head.weight.shape[0]
    if not 0 < k <= vocab:
        raise CtxDistillError(f"The teacher cache needs 0 < top_k <= {vocab} (the vocabulary), got {k}.")
    unique = list({pair_key(p): p for p in pairs}.items())
    writer = TopKWriter(path, sum(p.completion_len for _, p in unique), k, vocab)
    device = next(teacher.model.parameters()).device
    try:
        for start in tqdm(range(0, len(unique), batch_size), desc="teacher top-k cache", unit="batch",
                          dynamic_ncols=True):
            group = unique[start:start + batch_size]
            ids, mask = pad_right([p.teacher_ids for _, p in group], pad_id)
            final, _, offset = teacher.states(ids.to(device), mask.to(device))
            b_idx, pos = completion_rows([p.teacher_prompt_len for _, p in group],
                                         [p.completion_len for _, p in group])
            hidden = final[b_idx.to(device), (pos - offset).to(device)]
            vals, top = [], []
            for c in range(0, hidden.shape[0], chunk_size):
                logits = project(hidden[c:c + chunk_size], teacher.head, torch.float32)
                v, t = torch.log_softmax(logits / temperature, -1).topk(k, -1)
                vals.append(v.cpu())
                top.append(t.cpu())
            vals, top = torch.cat(vals).numpy(), torch.cat(top).numpy()
            row = 0
            for key, p in group:
                writer.add(key, top[row:row + p.completion_len], vals[row:row + p.completion_len])
                row += p.completion_len
    except BaseException:
        writer.abort()
        raise
    return writer.commit(temperature, fingerprint)


class TopKCache:
    """Reads a cache written by `build_topk_cache`; the arrays stay memory-mapped."""

    def __init__(self, path: Path):
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.exists():
            raise CtxDistillError(f"No teacher cache at {path} (meta.json missing); it is built by a teacher pass.")
        self.meta = json.loads(meta_file.read_text())
        self.k, self.temperature = self.meta["k"], self.meta["temperature"]
        self.fingerprint = self.meta.get("fingerprint", "")
        self.ids = np.load(path / "ids.npy", mmap_mode="r")
        self.logp = np.load(path / "logp.npy", mmap_mode="r")
        self.path = path

    def lookup(self, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
        entry = self.meta["index"].get(pair_key(pair))
        if entry is None:
            raise CtxDistillError(f"The teacher cache at {self.path} has no entry for a training pair: it was built "
                                  "from other data. Delete it to rebuild.")
        row, n = entry
        return self.ids[row:row + n], self.logp[row:row + n]

    def rows(self, pairs: list[Pair], skip_first: int = 0) -> TeacherTopK:
        """The cached teacher rows of `pairs`, in completion order, without the first `skip_first` of each."""
        ids, logp = zip(*(self.lookup(p) for p in pairs))
        ids = np.concatenate([a[skip_first:] for a in ids]).astype(np.int64)
        logp = np.concatenate([a[skip_first:] for a in logp])
        return TeacherTopK(torch.from_numpy(ids), torch.from_numpy(np.ascontiguousarray(logp)))
