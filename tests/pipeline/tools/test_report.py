"""pipeline.tools.report, rendered by a real headless Chromium: the page shows what the Parquet says."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.contract import errors_schema, predictions_schema
from pipeline.table import snapshot
from pipeline.tools import report as report_module
from pipeline.tools.index import ArrayEmbeddings, build_index
from pipeline.tools.search import EmbeddingIndex
from tests.images import encode, exif_tagged, quadrants
from tests.modules import imported_modules
from tests.pipeline.conftest import HOSTILE_NAME, MAGENTA, PROVENANCE, commit_output
from vgg.preprocess import ImageError, decode_image

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
QUERIES, K = 7, 3


class Node:
    """An element of the DOM that Chromium dumps, with just enough to query it."""

    def __init__(self, tag: str, attrs: dict[str, str | None]):
        self.tag, self.attrs, self.children = tag, attrs, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                classes = (child.attrs.get("class") or "").split()
                if (tag is None or child.tag == tag) and (cls is None or cls in classes):
                    found.append(child)
                found += child.find_all(tag, cls)
        return found

    def find(self, tag: str | None = None, cls: str | None = None) -> Node:
        (only,) = self.find_all(tag, cls)[:1]
        return only


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self._open = Node("#document", {})
        self._stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self._stack[-1].children.append(node)
        if tag not in VOID:
            self._stack.append(node)

    def handle_endtag(self, tag):
        for depth in range(len(self._stack) - 1, 0, -1):
            if self._stack[depth].tag == tag:
                del self._stack[depth:]
                break

    def handle_data(self, data):
        self._stack[-1].children.append(data)


def chromium(profile: pathlib.Path, *args: str) -> str:
    """Runs headless Chromium from the system packages; fails (never skips) where it is missing."""
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(binary):
        pytest.fail(
            "Chromium is not installed (/usr/bin/chromium): `apt-get install chromium`. The report test "
            "must render the page in a real browser, so it fails rather than skips."
        )
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rendered_dom(page: pathlib.Path, profile: pathlib.Path) -> Node:
    builder = _TreeBuilder()
    builder.feed(chromium(profile, "--dump-dom", page.as_uri()))
    return builder.root


@pytest.fixture(scope="module")
def run(labelled_run, built_index):
    return labelled_run, built_index


@pytest.fixture(scope="module")
def page(run, tmp_path_factory) -> pathlib.Path:
    out, index = run
    path = tmp_path_factory.mktemp("report") / "report.html"
    argv = ["--predictions", str(out), "--index", str(index), "--out", str(path)]
    assert report_module.main([*argv, "--queries", str(QUERIES), "--k", str(K)]) == 0
    return path


@pytest.fixture(scope="module")
def dom(page, tmp_path_factory) -> Node:
    return rendered_dom(page, tmp_path_factory.mktemp("profile"))


def read(out: pathlib.Path, prefix: str) -> list[dict]:
    return pq.read_table(snapshot(str(out)).files(prefix)).to_pylist()


@pytest.mark.browser
def test_grid_shows_every_image_with_its_top5_labels(run, dom):
    rows = read(run[0], "predictions")
    figures = {f.attrs["data-image-id"]: f for f in dom.find_all("figure", "image")}
    assert sorted(figures) == sorted(row["image_id"] for row in rows)  # all 7 labelled images
    for row in rows:
        figure = figures[row["image_id"]]
        assert figure.find("div", "uri").text() == row["uri"]
        assert figure.find("div", "size").text() == f"{row['width']}×{row['height']}"
        shown = [
            (li.find("span", "label").text(), li.find("span", "score").text()) for li in figure.find_all("li")
        ]
        assert shown == [(label["label"], f"{label['score']:.3f}") for label in row["labels"][:5]]
        assert figure.find("img", "thumb").attrs["src"].startswith("data:image/jpeg;base64,")
    assert dom.find("p", "count").text() == f"Showing {len(rows)} of {len(rows)} labelled images."


@pytest.mark.browser
def test_errors_table_shows_every_error_row_as_text(run, dom):
    rows = read(run[0], "errors")
    assert [row["uri"].rsplit("/", 1)[1] for row in rows] == [HOSTILE_NAME]  # the one file that failed
    shown = [
        {key: tr.find("td", key).text() for key in ("uri", "stage", "error_type", "message")}
        for tr in dom.find_all("tr", "error")
    ]
    assert shown == [{key: row[key] for key in ("uri", "stage", "error_type", "message")} for row in rows]
    # The hostile file name is text on the page, not an element: no <img src=x>, no onerror.
    assert all(img.attrs["src"].startswith("data:image/jpeg;base64,") for img in dom.find_all("img"))
    assert not [n for n in dom.find_all() if any(a.startswith("on") for a in n.attrs)]


@pytest.mark.browser
def test_neighbours_are_the_index_results(run, dom):
    index = EmbeddingIndex(str(run[1]))
    queries = dom.find_all("div", "query")
    assert len(queries) == QUERIES
    for query in queries:
        image_id = query.attrs["data-image-id"]
        expected = [h for h in index.search_id(image_id, K + 1) if h.image_id != image_id][:K]
        items = query.find("ol", "neighbours").find_all("li")
        assert [li.attrs["data-image-id"] for li in items] == [h.image_id for h in expected]
        assert [li.find("span", "score").text() for li in items] == [f"{h.score:.3f}" for h in expected]
        assert [li.find("div", "uri").text() for li in items] == [h.uri for h in expected]


@pytest.mark.browser
def test_untrained_weights_are_announced(dom):
    assert "UNTRAINED weights" in dom.find("p", "untrained").text()  # conftest's synthesized weights


@pytest.mark.browser
def test_thumbnails_are_drawn_by_the_browser(page, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path / "profile", "--window-size=1280,4000", f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    near = np.all(np.abs(pixels - np.array(MAGENTA)) <= 40, axis=2).sum()
    # magenta.png (300x200) is thumbnailed to 128x85 = 10,880 px; it appears in the grid and
    # again in the neighbours section, and no sample photo holds this magenta. Allow JPEG edges.
    assert near >= 10_000, near


@pytest.mark.browser
def test_hostile_text_is_shown_as_text(tmp_path):
    uri = 'javascript:alert(1)"><script>alert(2)</script>'
    label = "<b>bold</b> & <i>co</i>"
    message = "<img src=x onerror=alert(3)> broke"
    meta = PROVENANCE | {"weights_untrained": "false"}
    labels = [{"class_index": 7, "wnid": "n0", "label": label, "score": 0.5}]
    row = {"image_id": "h1", "uri": uri, "width": 1, "height": 2, "labels": labels}
    (tmp_path / "predictions").mkdir()
    (tmp_path / "errors").mkdir()
    pq.write_table(
        pa.Table.from_pylist([row], schema=predictions_schema(embeddings=False, provenance=meta)),
        tmp_path / "predictions" / "part-0.parquet",
    )
    error = {"image_id": "h2", "uri": uri, "stage": "decode", "error_type": "corrupt", "message": message}
    pq.write_table(
        pa.Table.from_pylist([error], schema=errors_schema(provenance=meta)),
        tmp_path / "errors" / "part-0.parquet",
    )
    commit_output(tmp_path)
    page = tmp_path / "hostile.html"
    report_module.write_report(str(tmp_path), str(page))
    dom = rendered_dom(page, tmp_path / "profile")
    figure = dom.find("figure", "image")
    assert figure.find("div", "uri").text() == uri
    assert figure.find("span", "label").text() == label
    assert "no thumbnail" in figure.find("div", "missing").text()  # the URI is not a readable file
    assert dom.find("td", "message").text() == message
    # Nothing the data said became markup, and trained weights get no warning banner.
    assert not dom.find_all("script") and not dom.find_all("b") and not dom.find_all("i")
    assert not dom.find_all("img") and not dom.find_all("p", "untrained")
    csp = [m.attrs["content"] for m in dom.find_all("meta") if m.attrs.get("http-equiv")]
    assert csp == [report_module.CSP]


def test_refuses_an_index_built_from_other_weights(run, tmp_path):
    vectors = np.ones((2, 4096), np.float32)
    build_index(ArrayEmbeddings(vectors, ["a", "b"], ["a", "b"]), str(tmp_path / "i"), provenance=PROVENANCE)
    with pytest.raises(ValueError, match="pass the index built from them"):
        report_module.write_report(str(run[0]), str(tmp_path / "r.html"), index=str(tmp_path / "i"))


# ------------------------------------------------------------------ thumbnails, without a browser


def _pixels(data_uri: str) -> np.ndarray:
    import base64
    import io

    encoded = data_uri.removeprefix("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as img:
        return np.asarray(img.convert("RGB")).astype(int)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_thumbnails_turn_images_as_the_decoder_does(tmp_path, orientation):
    # One EXIF orientation rule (vgg.preprocess.upright) for the labels and the thumbnails:
    # the four quadrant colours land in the same corners in both, for each of the 8 tags.
    data = exif_tagged(quadrants(), "PNG", orientation)
    (tmp_path / "q.png").write_bytes(data)
    src, width, height = report_module.thumbnail(str(tmp_path / "q.png"), size=64)
    decoded = decode_image(data)
    assert (width, height) == (decoded.width, decoded.height)  # 64x48 or 48x64 fits in 64 px
    thumb = _pixels(src)
    for row, col in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        inset = (row * 6 + 2 * (row == 0), col * 6 + 2 * (col == 0))  # clear of JPEG's edge blur
        want = decoded.pixels[inset[0] * 224 // height, inset[1] * 224 // width].astype(int)
        # Quality-80 JPEG moves flat colours a few levels; red, green, blue and white are 255 apart.
        assert np.abs(thumb[inset] - want).max() <= 40, (orientation, row, col)


def test_thumbnails_open_only_the_formats_the_job_accepts(tmp_path):
    # A PPM is an image Pillow reads, but not one the job does: its parser never sees the bytes.
    path = tmp_path / "image.ppm"
    path.write_bytes(encode(Image.new("RGB", (8, 8), (255, 0, 0)), "PPM"))
    with pytest.raises(ImageError, match="^unsupported_format: PPM images are not accepted"):
        report_module.thumbnail(str(path))
    html = report_module.Thumbnails(64)(str(path))
    assert html.startswith('<div class="thumb missing">no thumbnail: unsupported_format: PPM images')
    # Nothing in the report opens images itself: vgg.preprocess does.
    assert "PIL" not in imported_modules(report_module)


def test_a_thumbnail_that_crashes_the_decoder_costs_that_thumbnail_only(tmp_path):
    # The output's images are untrusted: the report decodes them in the sandbox's child, so a
    # segfault there (tests.pipeline.faults' decoder) is a note in the page and the next
    # thumbnail is still drawn by a new child.
    from tests.pipeline.faults import CRASH, crashing_thumbnail
    from vgg.sandbox import IsolatedDecoder

    crash, fine = tmp_path / "crash.png", tmp_path / "fine.png"
    crash.write_bytes(CRASH)
    fine.write_bytes(encode(Image.new("RGB", (40, 20), (0, 0, 255)), "PNG"))
    thumbs = report_module.Thumbnails(32)
    thumbs._decoder.close()

    thumbs._decoder = IsolatedDecoder(crashing_thumbnail, timeout_s=60)
    try:
        assert thumbs(str(crash)) == (
            '<div class="thumb missing">no thumbnail: the decoder process died while decoding this '
            "input (killed by signal SIGSEGV)</div>"
        )
        drawn = thumbs(str(fine))
    finally:
        thumbs.close()
    # 40x20 shrunk to fit 32x32 keeps its aspect ratio: 32x16.
    assert drawn.startswith('<img class="thumb" src="data:image/jpeg;base64,')
    assert 'width="32" height="16"' in drawn
