"""Queries an index from pipeline.tools.index by image file or image_id: the Python API and its CLI.

    python -m pipeline.search --index index/ --image cat.jpg --weights vgg16_weights.npz [--k 10] [--json]
    python -m pipeline.search --index index/ --image_id 592304cd3728bd0827e15c1c76baa431 --json

A query image is embedded as the indexed images were: the same weights (checked by
sha256), the resize mode and precision recorded in the index, then L2 normalisation. It is
decoded as the job decodes untrusted images, in a child process (vgg.sandbox): an
image that crashes or hangs the decoder is an `error:` line (exit status 2), not a crash.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import functools
import json
import logging
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline.contract import UNTRAINED_WARNING, is_untrained  # noqa: E402
from pipeline.storage import (  # noqa: E402
    ReadError,
    read_bytes,
    stage_weights,  # noqa: E402
)
from pipeline.tools.extras import MissingExtra, faiss  # noqa: E402
from pipeline.tools.index import IDS_FILE, INDEX_FILE, INFO_FILE, normalize  # noqa: E402
from vgg.preprocess import ImageError, decode_image  # noqa: E402
from vgg.sandbox import (  # noqa: E402
    DECODE_TIMEOUT_S,  # noqa: E402
    DecodeFailed,
    DecoderCrashed,
    IsolatedDecoder,
)
from vgg.weights import WeightsError, resolve_source, sha256_file  # noqa: E402

log = logging.getLogger("pipeline.tools.search")


class WeightsMismatch(ValueError):
    """Query weights that would embed differently from the indexed images."""


@dataclasses.dataclass(frozen=True)
class Hit:
    """One neighbour, best first: rank counts from 1, score is cosine similarity."""

    rank: int
    score: float
    image_id: str
    uri: str


class EmbeddingIndex:
    """A built index directory, ready to query with fc7 vectors or by image_id."""

    def __init__(self, path: str, *, search_params: str | None = None):
        info_path = os.path.join(path, INFO_FILE)
        if not os.path.exists(info_path):
            raise ValueError(
                f"{path} is not an index directory (no {INFO_FILE}); build one with python -m pipeline.index."
            )
        with open(info_path, encoding="utf-8") as handle:
            self.info: dict = json.load(handle)
        self.path = path
        self.provenance: dict[str, str] = self.info["provenance"]
        self.index = faiss.read_index(os.path.join(path, INDEX_FILE))
        params = self.info["search_params"] if search_params is None else search_params
        if params:
            faiss.ParameterSpace().set_index_parameters(self.index, params)
        self._ids = pq.ParquetFile(os.path.join(path, IDS_FILE))
        sizes = [self._ids.metadata.row_group(i).num_rows for i in range(self._ids.num_row_groups)]
        self._starts = np.cumsum([0, *sizes])[:-1].tolist()

    @property
    def untrained(self) -> bool:
        return is_untrained(self.provenance)

    def search(self, fc7: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The k nearest indexed images of each row of fc7 (n, input_dim), best first."""
        fc7 = np.atleast_2d(fc7)
        if fc7.shape[1] != self.info["input_dim"]:
            raise ValueError(
                f"queries must have {self.info['input_dim']} columns. Received: shape={fc7.shape}"
            )
        return self._hits(*self.index.search(normalize(fc7), self._check_k(k)))

    def search_id(self, image_id: str, k: int = 10) -> list[Hit]:
        """The k nearest images of an indexed image, using the vector the index holds for it."""
        inner = faiss.downcast_index(getattr(self.index, "index", self.index))
        if isinstance(inner, faiss.IndexIVF) and inner.direct_map.type == faiss.DirectMap.NoMap:
            inner.make_direct_map()  # reconstruct() needs the id -> list map (8 bytes per vector)
        vector = inner.reconstruct(self.row_of(image_id))[None]
        return self._hits(*inner.search(vector, self._check_k(k)))[0]

    def row_of(self, image_id: str) -> int:
        for group in range(self._ids.num_row_groups):
            table = self._ids.read_row_group(group, columns=["row", "image_id"])
            found = pc.index(table.column("image_id"), image_id).as_py()
            if found >= 0:
                return int(table.column("row")[found].as_py())
        raise ValueError(f"image_id {image_id!r} is not in the index {self.path}; ids are in {IDS_FILE}.")

    def lookup(self, row: int) -> tuple[str, str]:
        """(image_id, uri) of faiss id `row`."""
        group = bisect.bisect_right(self._starts, row) - 1
        table = self._row_group(group)
        return table["image_id"][row - self._starts[group]], table["uri"][row - self._starts[group]]

    @functools.lru_cache(maxsize=8)  # noqa: B019  (one index per process; a few row groups)
    def _row_group(self, group: int) -> dict[str, list[str]]:
        return self._ids.read_row_group(group, columns=["image_id", "uri"]).to_pydict()

    def _check_k(self, k: int) -> int:
        if k < 1:
            raise ValueError(f"k must be at least 1. Received: k={k}")
        return min(k, self.index.ntotal)

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[list[Hit]]:
        return [
            [
                Hit(rank, float(s), *self.lookup(int(r)))
                for rank, (s, r) in enumerate(zip(ss, rr), 1)
                if r >= 0
            ]
            for ss, rr in zip(scores, rows)
        ]


def decode_images(uris: Sequence[str], *, resize: str, decoder: IsolatedDecoder | None = None) -> np.ndarray:
    """The model's input (n, 224, 224, 3) from image files (local or any Beam filesystem).

    Decoded as pipeline.run decodes by default: in a child process (`decoder`, else one
    started and stopped here), with the job's time limit, so a file that crashes or hangs
    the decoder raises here and leaves this process running.

    Raises:
        ReadError: a file cannot be read.
        ImageError: a file is not a usable image (its error_type says why).
        DecoderCrashed: the decoder died on a file ("crashed") or ran out of time ("timeout").
        DecodeFailed: the decoder raised something else (a bug, not a bad image).
    """
    isolated = decoder or IsolatedDecoder(decode_image, timeout_s=DECODE_TIMEOUT_S)
    try:
        return np.stack([isolated(read_bytes(uri), resize=resize).pixels for uri in uris])
    finally:
        if decoder is None:
            isolated.close()


def embed_images(
    predictor, uris: Sequence[str], *, resize: str, decoder: IsolatedDecoder | None = None
) -> np.ndarray:
    """fc7 (n, 4096) of image files (local or any Beam filesystem), as pipeline.run embeds them.

    The files are decoded first (`decode_images`, whose errors this raises), then embedded.
    """
    return predictor(decode_images(uris, resize=resize, decoder=decoder))[1]


class Searcher:
    """Finds the indexed images nearest to a query image (embedded like them) or to an indexed id.

    Args:
      index: an index directory or a loaded EmbeddingIndex.
      weights: the weights the index's embeddings came from (path, remote URI or "imagenet");
        needed only to query by image. Refused at once when its sha256 differs.
      predictor: an already loaded vgg.inference.Predictor, instead of weights.
      search_params: faiss parameters overriding the index's own, e.g. "nprobe=64".
    """

    def __init__(
        self, index, *, weights: str | None = None, predictor=None, search_params: str | None = None
    ):
        self.index = (
            index if isinstance(index, EmbeddingIndex) else EmbeddingIndex(index, search_params=search_params)
        )
        self._predictor, self._weights = predictor, None
        self._decoder: IsolatedDecoder | None = None
        if predictor is not None:
            self._check(predictor.weights.sha256, predictor.weights.path)
            if predictor.precision != self.index.provenance["precision"]:
                raise WeightsMismatch(
                    f"the index was embedded at precision {self.index.provenance['precision']}; pass a "
                    f"Predictor built with it. Received: precision={predictor.precision!r}"
                )
        elif weights is not None:
            self._weights = resolve_source(stage_weights(weights))
            if not os.path.isfile(self._weights):
                raise WeightsError(f"{self._weights}: no such weights file.")
            self._check(sha256_file(self._weights), weights)
        if self.index.untrained:
            log.warning(UNTRAINED_WARNING)

    def _check(self, sha256: str, name: str) -> None:
        wanted = self.index.provenance["weights_sha256"]
        if sha256 != wanted:
            raise WeightsMismatch(
                f"weights {name} have sha256 {sha256}, but the index {self.index.path} holds fc7 from "
                f"{self.index.provenance.get('weights_name') or 'other weights'} (sha256 {wanted}); "
                "query with those weights, or rebuild the index from predictions made with these."
            )

    @property
    def predictor(self):
        if self._predictor is None:
            if self._weights is None:
                raise ValueError("querying by image needs the weights: pass weights=... (--weights).")
            from vgg.inference import Predictor  # TensorFlow loads only when an image is queried

            self._predictor = Predictor(
                self._weights,
                precision=self.index.provenance["precision"],
                sha256=self.index.provenance["weights_sha256"],
            )
        return self._predictor

    def embed(self, uris: Sequence[str]) -> np.ndarray:
        """fc7 (n, 4096) of image files, preprocessed as the indexed images were.

        The files are decoded (in this searcher's decoder process, `decode_images`) before
        the model is loaded, so a bad query image fails fast.
        """
        if self._decoder is None:
            self._decoder = IsolatedDecoder(decode_image, timeout_s=DECODE_TIMEOUT_S)
        pixels = decode_images(uris, resize=self.index.provenance["resize"], decoder=self._decoder)
        return self.predictor(pixels)[1]

    def close(self) -> None:
        """Ends the decoder's child process, if one was started (it also ends with this process)."""
        if self._decoder is not None:
            self._decoder.close()

    def by_images(self, uris: Sequence[str], k: int = 10) -> list[list[Hit]]:
        return self.index.search(self.embed(uris), k)

    def by_image(self, uri: str, k: int = 10) -> list[Hit]:
        return self.by_images([uri], k)[0]

    def by_id(self, image_id: str, k: int = 10) -> list[Hit]:
        return self.index.search_id(image_id, k)


def format_hits(hits: list[Hit], *, as_json: bool) -> str:
    """The CLI's output: a JSON list of {rank, score, image_id, uri}, or an aligned table."""
    if as_json:
        return json.dumps([dataclasses.asdict(hit) for hit in hits], indent=2)
    lines = [f"{'rank':>4}  {'score':>7}  {'image_id':<32}  uri"]
    lines += [f"{h.rank:>4}  {h.score:7.4f}  {h.image_id:<32}  {h.uri}" for h in hits]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.search", description=__doc__.split("\n")[0])
    parser.add_argument("--index", required=True, help="index directory written by python -m pipeline.index")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="query image file (local, gs://, s3://); needs --weights")
    query.add_argument("--image_id", help="query by an indexed image's id")
    parser.add_argument(
        "--weights", help="the weights the index was built with (npz, h5, .keras or 'imagenet')"
    )
    parser.add_argument("--k", type=int, default=10, help="neighbours to print")
    parser.add_argument("--search_params", default=None, help="faiss parameters, e.g. nprobe=64")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list of {rank, score, image_id, uri}"
    )
    args = parser.parse_args(argv)
    from pipeline import logs

    logs.configure()
    if args.image and not args.weights:
        parser.error("--image needs --weights (the weights the index was built with)")
    searcher = None
    try:
        faiss.require()
        searcher = Searcher(args.index, weights=args.weights, search_params=args.search_params)
        hits = searcher.by_image(args.image, args.k) if args.image else searcher.by_id(args.image_id, args.k)
    except (ImageError, DecoderCrashed, DecodeFailed) as error:  # the query image's, named
        kind, detail = getattr(error, "error_type", "decode_error"), getattr(error, "detail", str(error))
        print(" ".join(f"error: {args.image}: {kind}: {detail}".split()), file=sys.stderr)
        return 2
    except (ValueError, WeightsError, ReadError, MissingExtra) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if searcher is not None:
            searcher.close()
    print(format_hits(hits, as_json=args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
