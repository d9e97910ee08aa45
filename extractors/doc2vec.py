"""NMCL's paragraph vectors for titles (Le & Mikolov, "Distributed representations of sentences
and documents", ICML 2014): gensim Doc2Vec (PV-DM by default, 100-d) trained on the corpus'
titles by `fit`; each title's vector is inferred (`infer_vector`) at extraction time.

Determinism: training runs on one worker with a fixed seed; before each inference the model's
random state is re-seeded from the text itself, so a title gets the same vector alone or in a
batch, in any order. The trained model is kept as gensim's own serialisation (bytes) in the
state dict. Pooled = the paragraph vector; no sequence.
"""
from __future__ import annotations

import io
import os
import tempfile
import zlib

import numpy as np

from .base import Extractor, Features


def tokenize(text: str) -> list[str]:
    from gensim.utils import simple_preprocess

    return simple_preprocess(text, min_len=1, max_len=40)


class Doc2VecExtractor(Extractor):
    family = "doc2vec"
    needs_fit = True
    defaults = "text_doc2vec"
    reads = "title"

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed)
        self.dim = int(self.cfg["vector_size"])
        self.max_chars = self.cfg["max_chars"]
        self.model = None

    def _words(self, title):
        if title is None or not str(title).strip():
            return None
        text = str(title)[: int(self.max_chars)] if self.max_chars else str(title)
        words = tokenize(text)
        return words or None

    def fit(self, clips):
        from gensim.models.doc2vec import Doc2Vec, TaggedDocument

        docs = [TaggedDocument(w, [i]) for i, w in enumerate(self._words(c.title) for c in clips) if w]
        if not docs:
            raise ValueError("doc2vec.fit: none of the fit clips has a title")
        c = self.cfg
        self.model = Doc2Vec(vector_size=self.dim, window=int(c["window"]), min_count=int(c["min_count"]),
                             dm=int(c["dm"]), epochs=int(c["epochs"]), seed=self.seed, workers=1)
        self.model.build_vocab(docs)
        self.model.train(docs, total_examples=len(docs), epochs=self.model.epochs)
        self.fitted = True

    def infer(self, words: list[str]) -> np.ndarray:
        self.model.random = np.random.RandomState(zlib.crc32(" ".join(words).encode()) ^ self.seed)
        return self.model.infer_vector(words, epochs=int(self.cfg["infer_epochs"])).astype(np.float32)

    def extract(self, clips):
        self._check_fitted()
        out = []
        for c in clips:
            words = self._words(c.title)
            out.append(None if words is None else Features(pooled=self.infer(words), sequence=None))
        return out

    def state_dict(self):
        buf = io.BytesIO()
        self.model.save(buf)
        return {"gensim_doc2vec": buf.getvalue(), "vector_size": self.dim}

    def load_state_dict(self, state):
        from gensim.models.doc2vec import Doc2Vec

        if int(state["vector_size"]) != self.dim:
            raise ValueError(f"saved Doc2Vec has {state['vector_size']} dims, config asks for {self.dim}")
        # gensim loads from a file name only (it dispatches on the suffix).
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "doc2vec.model")
            with open(path, "wb") as f:
                f.write(state["gensim_doc2vec"])
            self.model = Doc2Vec.load(path)
        self.fitted = True

    def metadata(self):
        import gensim

        vocab = len(self.model.wv) if self.model is not None else 0
        return {**super().metadata(), "model": "gensim Doc2Vec", "weights": "fitted on the corpus",
                "random_weights": False, "gensim": gensim.__version__, "vocabulary": vocab}
