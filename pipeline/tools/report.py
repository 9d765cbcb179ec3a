"""A static HTML page of a run: thumbnails with their top-5 labels, the error rows, nearest neighbours.

    python -m pipeline.report --predictions out/ --index index/ --out report.html

Thumbnails are embedded as small JPEG data URIs, so the page is one self-contained file:
it can be mailed or kept as a CI artifact, and it shows images whose URIs a browser
cannot open (gs://, s3://) or that have since moved; at 128 px one costs about 5 KB.
Every URI, label and message is escaped, and a Content-Security-Policy lets the page
load nothing but its own inline style and data: images, so no script can ever run.
"""

from __future__ import annotations

import argparse
import base64
import html
import logging
import os
import sys
from collections.abc import Iterator

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import table as delta
from pipeline.contract import ERRORS, PREDICTIONS, UNTRAINED_WARNING, decode_provenance, is_untrained
from pipeline.storage import read_bytes
from pipeline.tools.extras import MissingExtra
from vgg.preprocess import jpeg_bytes, thumbnail_image
from vgg.sandbox import DECODE_TIMEOUT_S, IsolatedDecoder

log = logging.getLogger("pipeline.tools.report")

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
.untrained{background:#fdd;border:2px solid #c00;padding:.5em 1em;font-weight:bold}
dl.provenance{display:grid;grid-template-columns:max-content auto;gap:0 1em}dt{font-weight:bold}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:12px}
figure{margin:0;border:1px solid #ddd;padding:6px}.uri{word-break:break-all;font-size:12px;color:#555}
.thumb{display:block;margin:auto}.missing{height:96px;background:#eee;font-size:12px;padding:4px}
ol.labels{margin:4px 0 0;padding-left:1.4em}.score{color:#666;font-variant-numeric:tabular-nums}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
.query{display:flex;gap:12px;align-items:flex-start;margin-bottom:12px}
ol.neighbours{display:flex;gap:8px;list-style:none;padding:0;margin:0}ol.neighbours li{width:140px}
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def read_rows(files: list[str], columns: list[str], limit: int) -> tuple[list[dict], int, dict[str, str]]:
    """The first `limit` rows of a table's files, their total row count, and provenance."""
    rows, total, provenance = [], 0, {}
    for path in files:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            parquet = pq.ParquetFile(handle, pre_buffer=False)  # stream: no read-ahead of whole chunks
            total += parquet.metadata.num_rows
            provenance = provenance or decode_provenance(parquet.schema_arrow.metadata)
            for batch in parquet.iter_batches(1024, columns=columns):
                if len(rows) >= limit:
                    break
                rows += batch.slice(0, limit - len(rows)).to_pylist()
    return rows, total, provenance


def thumbnail(uri: str, size: int = 128, decoder: IsolatedDecoder | None = None) -> tuple[str, int, int]:
    """(JPEG data URI, width, height) of the image at `uri`, shrunk to fit size x size.

    The output's images are untrusted bytes: decoded in the sandbox's child process, as the
    job decodes them (vgg.sandbox; the accepted formats' parsers only, the same EXIF
    orientation rule), so a crash or a hang costs one thumbnail, not the report.
    """
    data = read_bytes(uri, attempts=2)
    if decoder is None:
        decoder = IsolatedDecoder(thumbnail_image, timeout_s=DECODE_TIMEOUT_S)
        try:
            small = decoder(data, size=size).pixels
        finally:
            decoder.close()
    else:
        small = decoder(data, size=size).pixels
    height, width = small.shape[:2]
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(small)).decode(), width, height


class Thumbnails:
    """img elements for URIs, each image read once; a failed read shows its reason instead.

    One sandboxed decoder for the whole report; close() ends its child process.
    """

    def __init__(self, size: int):
        self.size, self._made = size, {}
        self._decoder = IsolatedDecoder(thumbnail_image, timeout_s=DECODE_TIMEOUT_S)

    def close(self) -> None:
        self._decoder.close()

    def __call__(self, uri: str) -> str:
        if uri not in self._made:
            try:
                src, width, height = thumbnail(uri, self.size, self._decoder)
                self._made[uri] = (
                    f'<img class="thumb" src="{src}" width="{width}" height="{height}" alt="{_esc(uri)}">'
                )
            except Exception as error:  # any unreadable image becomes a note, never a failed report
                log.warning("no thumbnail for %s: %s", uri, error)
                self._made[uri] = f'<div class="thumb missing">no thumbnail: {_esc(error)}</div>'
        return self._made[uri]


def _image(row: dict, thumbs: Thumbnails, top: int) -> str:
    labels = "".join(
        f'<li data-class-index="{int(item["class_index"])}"><span class="label">{_esc(item["label"])}</span> '
        f'<span class="score">{item["score"]:.3f}</span></li>'
        for item in row["labels"][:top]
    )
    return (
        f'<figure class="image" data-image-id="{_esc(row["image_id"])}">{thumbs(row["uri"])}'
        f'<figcaption><div class="uri">{_esc(row["uri"])}</div>'
        f'<div class="size">{int(row["width"])}×{int(row["height"])}</div>'
        f'<ol class="labels">{labels}</ol></figcaption></figure>'
    )


def _error(row: dict) -> str:
    cells = "".join(
        f'<td class="{key}">{_esc(row[key])}</td>' for key in ("uri", "stage", "error_type", "message")
    )
    return f'<tr class="error" data-image-id="{_esc(row["image_id"])}">{cells}</tr>'


def _neighbours(index, rows: list[dict], thumbs: Thumbnails, queries: int, k: int) -> Iterator[str]:
    for row in rows[:queries]:
        try:
            hits = [hit for hit in index.search_id(row["image_id"], k + 1) if hit.image_id != row["image_id"]]
        except ValueError as error:  # not in this index
            yield f'<p class="note">{_esc(row["uri"])}: {_esc(error)}</p>'
            continue
        items = "".join(
            f'<li data-image-id="{_esc(h.image_id)}">{thumbs(h.uri)}<span class="score">{h.score:.3f}</span>'
            f'<div class="uri">{_esc(h.uri)}</div></li>'
            for h in hits[:k]
        )
        yield (
            f'<div class="query" data-image-id="{_esc(row["image_id"])}"><figure>{thumbs(row["uri"])}'
            f'<div class="uri">{_esc(row["uri"])}</div></figure><ol class="neighbours">{items}</ol></div>'
        )


def write_report(
    predictions: str,
    out: str,
    *,
    errors: str | None = None,
    index: str | None = None,
    max_images: int = 200,
    max_errors: int = 1000,
    queries: int = 4,
    k: int = 5,
    thumb_px: int = 128,
) -> dict[str, int]:
    """Writes the page to `out` (local path); returns the counts it shows."""
    try:
        files = delta.reader_files(predictions, PREDICTIONS)
        # The run's errors table lies beside its predictions table (the same snapshot).
        error_files = delta.reader_files(errors or delta.output_of(predictions, PREDICTIONS), ERRORS)
    except delta.TableError as error:
        raise ValueError(str(error)) from error
    rows, total, provenance = read_rows(files, ["image_id", "uri", "width", "height", "labels"], max_images)
    error_columns = ["image_id", "uri", "stage", "error_type", "message"]
    error_rows, error_total, _ = read_rows(error_files, error_columns, max_errors)
    thumbs = Thumbnails(thumb_px)
    try:
        body = [
            f"<header><h1>VGG16 labels: {total} images labelled, {error_total} failed</h1>",
            f'<p class="untrained">{_esc(UNTRAINED_WARNING)}</p>' if is_untrained(provenance) else "",
            '<dl class="provenance">',
            *(f"<dt>{_esc(key)}</dt><dd>{_esc(value)}</dd>" for key, value in sorted(provenance.items())),
            "</dl></header>",
            '<section id="images"><h2>Images</h2>',
            f'<p class="count">Showing {len(rows)} of {total} labelled images.</p>',
            '<div class="grid">',
            *(_image(row, thumbs, 5) for row in rows),
            "</div></section>",
            f'<section id="errors"><h2>Errors</h2><p class="count">Showing {len(error_rows)} of '
            f"{error_total} failed inputs.</p><table><thead><tr><th>uri</th><th>stage</th>"
            "<th>error_type</th><th>message</th></tr></thead><tbody>",
            *(_error(row) for row in error_rows),
            "</tbody></table></section>",
        ]
        if index is not None:
            from pipeline.tools.search import EmbeddingIndex  # faiss loads only when neighbours are asked for

            loaded = EmbeddingIndex(index)
            if provenance and loaded.provenance["weights_sha256"] != provenance.get("weights_sha256"):
                raise ValueError(
                    f"the index {index} holds fc7 of weights sha256 {loaded.provenance['weights_sha256']}, "
                    f"not those of these predictions ({provenance.get('weights_sha256')}); pass the index "
                    "built from them."
                )
            body += [
                '<section id="neighbours"><h2>Nearest neighbours</h2>',
                f"<p>Cosine similarity of fc7; {_esc(loaded.info['kind'])} index "
                f"{_esc(loaded.info['index_key'])} of {loaded.info['count']} images.</p>",
                *_neighbours(loaded, rows, thumbs, queries, k),
                "</section>",
            ]
        page = (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>VGG16 labels: {total} images</title><style>{STYLE}</style></head>"
            f"<body>{''.join(body)}</body></html>\n"
        )
    finally:
        thumbs.close()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        handle.write(page)
    return {"images": total, "shown": len(rows), "errors": error_total, "bytes": len(page.encode())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", required=True, help="the job's --output folder")
    parser.add_argument(
        "--errors", default=None, help="the --output folder of the errors to show (default: the same)"
    )
    parser.add_argument(
        "--index", default=None, help="index directory from python -m pipeline.index, for neighbours"
    )
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument("--max_images", type=int, default=200, help="images in the grid")
    parser.add_argument("--queries", type=int, default=4, help="images whose neighbours are shown")
    parser.add_argument("--k", type=int, default=5, help="neighbours per query")
    parser.add_argument("--thumb_px", type=int, default=128, help="thumbnail size")
    args = parser.parse_args(argv)
    from pipeline import logs

    logs.configure()
    try:
        counts = write_report(
            args.predictions,
            args.out,
            errors=args.errors,
            index=args.index,
            max_images=args.max_images,
            queries=args.queries,
            k=args.k,
            thumb_px=args.thumb_px,
        )
    except (ValueError, MissingExtra) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: {counts['shown']} of {counts['images']} images, {counts['errors']} errors, "
        f"{counts['bytes'] / 1024:.0f} KiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
