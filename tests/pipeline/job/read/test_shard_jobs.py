"""The job over shards (`--input_format webdataset|tfrecord|parquet`) end to end, as users run it.

The shards are written with the libraries users write them with (tests/shards.py:
tarfile, tf.io.TFRecordWriter, pyarrow) and hold the same photos and broken files as
the loose-file runs (conftest.photo_dir): every format must give the rows the loose
files give, apart from uri and image_id. Most runs are `pipeline.run.run` in this
process with the fake model (tests/pipeline/fakes.py); one is the real
`python -m pipeline.run` with the (synthesized, UNTRAINED) VGG16.
"""

from __future__ import annotations

import logging
import operator
import os
import pathlib
import struct
import zipfile

import numpy as np
import pytest

from pipeline import run
from pipeline.contract import image_id
from pipeline.job import options
from pipeline.job.read.shards import FORMATS, read_shard
from tests.pipeline.conftest import BAD, GOOD
from tests.pipeline.faults import FaultyFileSystem, faulty
from tests.pipeline.jobs import run_here, run_job
from tests.shards import example, tar_offsets, write_img2dataset, write_parquet, write_tar, write_tfrecord


@pytest.fixture(autouse=True)
def no_faults():
    FaultyFileSystem.reset()
    yield
    FaultyFileSystem.reset()


def stem(name: str) -> str:
    return name.split(".", 1)[0]


def basename_stem(uri: str) -> str:
    return stem(os.path.basename(uri))


def pack(files: list, fmt: str, folder) -> str:
    """Files (paths) as one shard of `fmt` in folder, keyed by their stems (cat.png -> #cat): its path.

    webdataset: a member per file, named as the file (its key is the stem); tfrecord and
    parquet: the bytes under `image/encoded` or `jpg`, the stem under `key`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    named = [(f.name, f.read_bytes()) for f in files]
    if fmt == "webdataset":
        path = folder / "photos.tar"
        write_tar(path, named)
    elif fmt == "tfrecord":
        path = folder / "photos.tfrecord"
        write_tfrecord(path, [example({"image/encoded": data, "key": stem(n).encode()}) for n, data in named])
    else:
        path = folder / "photos.parquet"
        write_parquet(path, [{"key": [stem(n) for n, _ in named], "jpg": [data for _, data in named]}])
    return str(path)


def by_key(rows: list[dict], key) -> dict:
    """Rows by key(uri), with image_id and uri dropped: what must agree between loose files and shards."""
    found = {key(r["uri"]): {k: v for k, v in r.items() if k not in ("image_id", "uri")} for r in rows}
    assert len(found) == len(rows)  # every key once
    return found


def label(out, *args) -> None:
    """pipeline.run.run in this process with the fake model (no summary line needed)."""
    from apache_beam.testing.test_pipeline import TestPipeline

    from tests.pipeline.fakes import FakeHandler
    from tests.pipeline.jobs import FAST_RETRIES

    argv = [*map(str, args), "--output", str(out)]
    run.run(argv, test_pipeline=TestPipeline(), handler=FakeHandler(max_batch_size=8), reader=FAST_RETRIES)


@pytest.fixture(scope="module")
def loose_rows(photo_dir, npz_path, tmp_path_factory, read_rows):
    """The fake model's rows for photo_dir's files as loose files, by file stem."""
    out = tmp_path_factory.mktemp("loose")
    label(out, "--input", f"{photo_dir}/*", "--weights", npz_path, "--embeddings")
    return {table: by_key(read_rows(out, table)[0], basename_stem) for table in ("predictions", "errors")}


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_gives_the_rows_of_the_loose_files(
    fmt, photo_dir, loose_rows, npz_path, tmp_path, capsys, read_rows
):
    shard = pack(sorted(photo_dir.iterdir()), fmt, tmp_path / "shards")
    field = () if fmt == "webdataset" else ("--key_field", "key")
    line = run_here(
        capsys,
        *("--input_format", fmt, "--input", shard, *field),
        *("--output", tmp_path / "out", "--weights", npz_path, "--embeddings"),
    )
    # The 5 photos labelled, the 3 broken files (text, empty, half a JPEG) failed to decode.
    assert line.startswith("summary: 8 inputs from 1 shard(s), 5 labelled, 3 failed (read 0, decode 3, ")
    key = lambda uri: uri.removeprefix(f"{shard}#")  # noqa: E731
    predictions, errors = (
        read_rows(tmp_path / "out", "predictions")[0],
        read_rows(tmp_path / "out", "errors")[0],
    )
    assert sorted(r["uri"] for r in predictions + errors) == sorted(
        f"{shard}#{stem(n)}" for n in {**GOOD, **BAD}
    )
    assert all(r["image_id"] == image_id(r["uri"]) for r in predictions + errors)
    # Labels, scores, sizes and fc7: every column equal (same bytes, same decode, same model).
    got = by_key(predictions, key)
    assert got.keys() == loose_rows["predictions"].keys() == {stem(n) for n in GOOD}
    for name, row in got.items():
        want = loose_rows["predictions"][name]
        assert (row["labels"], row["width"], row["height"]) == (want["labels"], want["width"], want["height"])
        np.testing.assert_array_equal(row["fc7"], want["fc7"])
    assert {k: (r["stage"], r["error_type"]) for k, r in by_key(errors, key).items()} == {
        stem(name): want for name, want in BAD.items()
    }


@pytest.mark.slow
def test_real_vgg16_labels_a_tar_shard_as_the_loose_files(
    direct_run, photo_dir, npz_path, tmp_path, read_rows
):
    # direct_run: the same files as loose files, the same real job (--embeddings, batch 4).
    shard = pack(sorted(photo_dir.iterdir()), "webdataset", tmp_path / "shards")
    out = tmp_path / "out"
    done = run_job(
        *("--input_format", "webdataset", "--input", shard, "--output", out),
        *("--weights", npz_path, "--embeddings", "--batch_size", "4"),
    )
    assert (
        "summary: 8 inputs from 1 shard(s), 5 labelled, 3 failed (read 0, decode 3, inference 0)"
        in done.stdout
    )
    loose = by_key(read_rows(direct_run[0], "predictions")[0], basename_stem)
    packed = by_key(read_rows(out, "predictions")[0], lambda uri: uri.removeprefix(f"{shard}#"))
    assert packed.keys() == loose.keys() == {stem(n) for n in GOOD}
    for name, row in packed.items():
        want = loose[name]
        # Batches are made in another order here: the same numbers up to float rounding.
        assert [x["class_index"] for x in row["labels"]] == [x["class_index"] for x in want["labels"]]
        assert [x["wnid"] for x in row["labels"]] == [x["wnid"] for x in want["labels"]]
        np.testing.assert_allclose(
            [x["score"] for x in row["labels"]], [x["score"] for x in want["labels"]], rtol=1e-4
        )
        np.testing.assert_allclose(row["fc7"], want["fc7"], rtol=1e-3, atol=1e-3)
        assert (row["width"], row["height"]) == (want["width"], want["height"])
    errors = by_key(read_rows(out, "errors")[0], lambda uri: uri.removeprefix(f"{shard}#"))
    assert {k: (r["stage"], r["error_type"]) for k, r in errors.items()} == {
        stem(name): want for name, want in BAD.items()
    }


def test_mixed_shards_every_input_exactly_once(photo_dir, npz_path, tmp_path, capsys, read_rows):
    folder = tmp_path / "shards"
    folder.mkdir()
    photo = {stem(name): (photo_dir / name).read_bytes() for name in {**GOOD, **BAD}}
    write_tar(
        folder / "0-good.tar",
        [("cat.png", photo["cat"]), ("cat.json", b"{}"), ("coffee.jpg", photo["coffee"])],
    )
    # Three photos, cut inside the third's data: the first two are labelled, then one row for the shard.
    three = [
        ("astronaut.webp", photo["astronaut"]),
        ("rocket.gif", photo["rocket"]),
        ("temple.bmp", photo["temple"]),
    ]
    write_tar(folder / "full.tar", three)
    cut = tar_offsets(len(d) for _, d in three)[2] + 512 + 100  # 100 bytes into temple.bmp's data
    (folder / "1-cut.tar").write_bytes((folder / "full.tar").read_bytes()[:cut])
    (folder / "full.tar").unlink()
    write_tar(
        folder / "2-odd.tar",
        [
            ("caption.txt", b"a sample without an image"),
            ("huge.jpg", b"x" * 2_000_001),  # over --max_input_bytes below
            ("notes.jpg", photo["notes"]),
            ("half.jpg", photo["half"]),
        ],
    )
    # Every shard listed, one that is gone among them; the pattern matches the first again.
    listing = tmp_path / "shards.txt"
    listing.write_text(
        "".join(f"{faulty(folder / n)}\n" for n in ("0-good.tar", "1-cut.tar", "2-odd.tar", "3-gone.tar"))
    )
    line = run_here(
        capsys,
        *("--input_format", "webdataset", "--input_list", listing, "--input", faulty(folder / "0-good.tar")),
        *("--output", tmp_path / "out", "--weights", npz_path, "--max_input_bytes", 2_000_000),
        beam_flags=["--direct_runner_bundle_repeat=2"],
    )
    # Each bundle was replayed twice more: each shard opened 3 times, once only though listed
    # and matched; 0-good.tar once more on the launcher, which checks that it is a tar.
    reads = {os.path.basename(p): n for p, n in FaultyFileSystem.opens.items()}
    assert reads == {"0-good.tar": 4, "1-cut.tar": 3, "2-odd.tar": 3, "3-gone.tar": 3}
    s = faulty(folder)
    expected = {
        f"{s}/0-good.tar#cat": None,
        f"{s}/0-good.tar#coffee": None,
        f"{s}/1-cut.tar#astronaut": None,
        f"{s}/1-cut.tar#rocket": None,
        f"{s}/1-cut.tar": ("read", "damaged_shard"),
        f"{s}/2-odd.tar#caption": ("read", "no_image"),
        f"{s}/2-odd.tar#huge": ("read", "too_large"),
        f"{s}/2-odd.tar#notes": ("decode", "not_an_image"),
        f"{s}/2-odd.tar#half": ("decode", "truncated"),
        f"{s}/3-gone.tar": ("read", "not_found"),
    }
    assert line.startswith(
        "summary: 10 inputs from 4 shard(s), 4 labelled, 6 failed (read 4, decode 2, inference 0); "
    )
    predictions, errors = (
        read_rows(tmp_path / "out", "predictions")[0],
        read_rows(tmp_path / "out", "errors")[0],
    )
    ids = [r["image_id"] for r in predictions + errors]
    assert len(ids) == len(set(ids)) == len(expected)  # once each, nothing lost, replays or not
    assert {r["uri"]: None for r in predictions} | {
        r["uri"]: (r["stage"], r["error_type"]) for r in errors
    } == expected
    (damage,) = [r["message"] for r in errors if r["error_type"] == "damaged_shard"]
    assert damage.endswith("; 2 sample(s) read before it, the rest not read")
    assert "in member 'temple.bmp'" in damage
    # A re-run (no replays) reads the same uris from the same shards: the very same rows.
    line = run_here(
        capsys,
        *("--input_format", "webdataset", "--input_list", listing, "--input", faulty(folder / "0-good.tar")),
        *("--output", tmp_path / "out", "--weights", npz_path, "--max_input_bytes", 2_000_000),
    )
    assert line.startswith("summary: 10 inputs from 4 shard(s), 4 labelled, 6 failed (read 4, decode 2, ")
    by_id = operator.itemgetter("image_id")
    for table, rows in (("predictions", predictions), ("errors", errors)):
        assert sorted(read_rows(tmp_path / "out", table)[0], key=by_id) == sorted(rows, key=by_id)


def photo_shards(photo_dir, folder) -> None:
    """a.tar: cat, notes (text); b.tar: coffee, rocket; c.tar: astronaut, half (half a JPEG)."""
    folder.mkdir()
    for shard, names in {
        "a": ["cat.png", "notes.jpg"],
        "b": ["coffee.jpg", "rocket.gif"],
        "c": ["astronaut.webp", "half.jpg"],
    }.items():
        write_tar(folder / f"{shard}.tar", [(n, (photo_dir / n).read_bytes()) for n in names])


def outcome(read_rows, out) -> dict:
    """uri (shard name#key) -> None for a prediction, else error_type; every row once."""
    predictions, errors = read_rows(out, "predictions")[0], read_rows(out, "errors")[0]
    rows = {os.path.basename(r["uri"]): None for r in predictions}
    rows.update({os.path.basename(r["uri"]): r["error_type"] for r in errors})
    assert len(rows) == len(predictions) + len(errors)  # no input twice, in one table or across both
    return rows


@pytest.mark.slow
def test_resume_reads_every_shard_but_labels_only_what_is_missing(
    photo_dir, npz_path, tmp_path, capsys, read_rows
):
    folder = tmp_path / "shards"
    photo_shards(photo_dir, folder)
    out = tmp_path / "out"
    args = ("--input_format", "webdataset", "--output", out, "--weights", npz_path)

    def shards(*names):
        """A list file of these shards (the launcher checks the first one's format: a readable one)."""
        listing = tmp_path / f"{''.join(names)}.txt"
        listing.write_text("".join(f"{faulty(folder / f'{n}.tar')}\n" for n in names))
        return "--input_list", listing

    # A first run over a and b only, while b could not be opened (one row for the shard).
    FaultyFileSystem.faults[str(folder / "b.tar")] = ("permission", 0)
    line = run_here(capsys, *shards("a", "b"), *args)
    assert "summary: 3 inputs from 2 shard(s), 1 labelled, 2 failed (read 1, decode 1, inference 0)" in line
    assert outcome(read_rows, out) == {
        "a.tar#cat": None,
        "a.tar#notes": "not_an_image",
        "b.tar": "permission_denied",
    }
    FaultyFileSystem.reset()  # b can be opened now

    # --resume over all three: a is read again (only reading tells its members) and both its
    # members skipped; b's failure stays a failure, so b is not even opened; c is new.
    line = run_here(capsys, *shards("a", "b", "c"), *args, "--resume")
    assert "b.tar" not in {os.path.basename(p) for p in FaultyFileSystem.opens}
    assert line.startswith(
        "summary: 2 inputs from 2 shard(s), 1 labelled, 1 failed (read 0, decode 1, inference 0), "
        "3 skipped as already in --output, 0 earlier errors retried; "
    )
    assert outcome(read_rows, out) == {
        "a.tar#cat": None,
        "a.tar#notes": "not_an_image",
        "b.tar": "permission_denied",
        "c.tar#astronaut": None,
        "c.tar#half": "truncated",
    }

    # --retry_errors over b and c: b is opened and labelled, its old row gone; c's failed
    # member is tried again; a (not an input now) keeps its rows, its errors row carried.
    line = run_here(capsys, *shards("c", "b"), *args, "--resume", "--retry_errors")
    # Retried: b (its shard row), then c#half; skipped: c#astronaut.
    assert line.startswith(
        "summary: 3 inputs from 2 shard(s), 2 labelled, 1 failed (read 0, decode 1, inference 0), "
        "1 skipped as already in --output, 2 earlier errors retried; "
    )
    assert outcome(read_rows, out) == {
        "a.tar#cat": None,
        "a.tar#notes": "not_an_image",
        "b.tar#coffee": None,
        "b.tar#rocket": None,
        "c.tar#astronaut": None,
        "c.tar#half": "truncated",
    }
    errors, files = read_rows(out, "errors")
    # The errors table's files are the last run's alone: --retry_errors replaced them in its commit.
    assert [os.path.basename(f)[:11] for f in files] == ["part-r00003"]


# ------------------------------------------------------------------- the launcher


def test_input_format_mismatch_is_one_error_line(photo_dir, npz_path, tmp_path):
    shard = pack(sorted(photo_dir.iterdir()), "parquet", tmp_path / "shards")
    out = tmp_path / "out"
    done = run_job(
        *("--input_format", "webdataset", "--input", f"{tmp_path}/shards/*", "--output", out),
        *("--weights", npz_path),
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"error: --input_format webdataset: {shard} does not look like a tar archive (WebDataset shard); "
        "it looks like a Parquet file: pass --input_format parquet.\n"
    )
    assert not out.exists()  # nothing written


def field_shards(folder) -> dict[str, str]:
    """A shard of each format with an image under jpg and a key under key: their paths."""
    folder.mkdir()
    write_tar(folder / "s.tar", [("000.jpg", b"x"), ("000.json", b"{}")])
    write_tfrecord(folder / "s.tfrecord", [example({"jpg": b"x", "key": b"000"})])
    write_parquet(folder / "s.parquet", [{"key": ["000"], "jpg": [b"x"], "caption": ["a"]}])
    write_parquet(folder / "captions.parquet", [{"key": ["000"], "caption": ["a"]}])
    return {
        fmt: str(folder / name)
        for fmt, name in (("webdataset", "s.tar"), ("tfrecord", "s.tfrecord"), ("parquet", "s.parquet"))
    }


@pytest.mark.parametrize(
    ("fmt", "flags", "problem"),
    [
        (
            "webdataset",
            ["--image_field", "jpeg"],
            "its first sample has no member with suffix 'jpeg' for --image_field (members: jpg, json)",
        ),
        (
            "tfrecord",
            ["--image_field", "image"],
            "its first record has no feature 'image' for --image_field (features: jpg, key)",
        ),
        (
            "tfrecord",
            ["--key_field", "id"],
            "its first record has no feature 'id' for --key_field (features: jpg, key)",
        ),
        (
            "parquet",
            ["--image_field", "jgp"],
            "no column 'jgp' for --image_field (columns: key, jpg, caption)",
        ),
        ("parquet", ["--key_field", "kye"], "no column 'kye' for --key_field (columns: key, jpg, caption)"),
        (
            "parquet",
            ["--image_field", "caption"],
            "column 'caption' is string, not binary or a struct with a binary 'bytes' field",
        ),
    ],
)
def test_unknown_field_is_one_error_line(fmt, flags, problem, npz_path, tmp_path, capsys):
    shard = field_shards(tmp_path / "shards")[fmt]
    out = tmp_path / "out"
    code = run.main(
        ["--input_format", fmt, "--input", shard, *flags, "--output", str(out), "--weights", npz_path]
    )
    assert (code, capsys.readouterr().err) == (2, f"error: --input_format {fmt}: {shard}: {problem}.\n")
    assert not out.exists()
    # The fields that are there pass (with no other flag, each format's default image field).
    run.check_launch(
        options.parse_args(
            ["--input_format", fmt, "--input", shard, "--output", str(out), "--weights", npz_path]
        )[0]
    )


def test_parquet_without_a_default_image_column_is_one_error_line(npz_path, tmp_path, capsys):
    field_shards(tmp_path / "shards")
    shard = tmp_path / "shards" / "captions.parquet"
    code = run.main(
        [
            "--input_format",
            "parquet",
            "--input",
            str(shard),
            "--output",
            str(tmp_path / "out"),
            "--weights",
            npz_path,
        ]
    )
    assert (code, capsys.readouterr().err) == (
        2,
        f"error: --input_format parquet: {shard}: none of the columns 'jpg' or 'image' or 'image_bytes' "
        "that hold the image by default; name it with --image_field (columns: key, caption).\n",
    )


@pytest.mark.parametrize(("runner", "spread"), [("DirectRunner", False), ("PortableRunner", True)])
def test_images_are_spread_over_workers_except_on_the_direct_runner(
    runner, spread, photo_dir, npz_path, tmp_path
):
    # Across workers a big shard's images are reshuffled so that many workers label them;
    # the DirectRunner's shuffle is in memory, so there they stream from reader to decoder.
    # Building the graph needs no job service: nothing runs.
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.job.options import parse_args

    shard = pack(sorted(photo_dir.glob("*.jpg")), "webdataset", tmp_path / "in")
    args, beam_args = parse_args(
        [
            "--input",
            shard,
            "--input_format",
            "webdataset",
            "--output",
            str(tmp_path / "out"),
            "--weights",
            npz_path,
        ]
    )
    pipeline = beam.Pipeline(runner=runner, options=PipelineOptions(beam_args))
    run.build_pipeline(pipeline, args, run.check_launch(args))
    names = {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}
    assert ("Inputs/SpreadShards" in names, "Inputs/SpreadImages" in names) == (True, spread)


# ------------------------------------------------------------ damaged and stray files, damaged weights


@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_shards_are_rows_wherever_they_are_cut(fmt, photo_dir, npz_path, tmp_path, capsys, read_rows):
    # The photos' shard beside copies of it damaged as a copy or download damages files:
    # cut inside its first header, cut in the middle, garbage, empty. The job reads them all
    # and ends; what the reader makes of each file, member by member, is tested in
    # test_shards.py: here every item it gives is exactly one row, and each damaged file
    # has its own damaged_shard row (an empty TFRecord file is a shard of no records).
    folder = tmp_path / "shards"
    good = pathlib.Path(pack(sorted(photo_dir.iterdir()), fmt, folder))
    data = good.read_bytes()
    damaged = {
        f"cut-head{good.suffix}": data[:10],
        f"cut-middle{good.suffix}": data[: len(data) // 2],
        f"garbage{good.suffix}": np.random.default_rng(0).bytes(len(data) // 4),
        f"empty{good.suffix}": b"",
    }
    for name, content in damaged.items():
        (folder / name).write_bytes(content)
    key_field = () if fmt == "webdataset" else ("--key_field", "key")
    out = tmp_path / "out"
    run_here(
        capsys,
        *(
            "--input_format",
            fmt,
            "--input",
            f"{folder}/*",
            *key_field,
            "--output",
            out,
            "--weights",
            npz_path,
        ),
    )
    items = [
        item.uri
        for path in sorted(folder.iterdir())
        for item in read_shard(str(path), fmt, key_field=key_field[1] if key_field else None)
    ]
    predictions, errors = read_rows(out, "predictions")[0], read_rows(out, "errors")[0]
    assert sorted(r["uri"] for r in predictions + errors) == sorted(items)  # each once
    assert {r["uri"]: r["error_type"] for r in errors if r["uri"] in map(str, folder.iterdir())} == {
        str(folder / name): "damaged_shard"
        for name in damaged
        if not (fmt == "tfrecord" and name.startswith("empty"))
    }
    # Alone, a shard that shows nothing of the format is the launcher's one line, exit 2.
    for name in ("empty", "garbage"):
        lone = folder / f"{name}{good.suffix}"
        code = run.main(
            [
                *("--input_format", fmt, "--input", str(lone), *key_field),
                *("--output", str(tmp_path / "lone"), "--weights", npz_path),
            ]
        )
        err = capsys.readouterr().err
        assert (code, err.count("\n"), "Traceback" in err) == (2, 1, False)
        assert err.startswith(f"error: --input_format {fmt}: {lone} does not look like ")
        assert not (tmp_path / "lone").exists()


def test_an_img2dataset_folder_matched_whole(photo_dir, npz_path, tmp_path, capsys, caplog, read_rows):
    # `--input 'laion/*'` over img2dataset's webdataset output: its tars' images are labelled
    # (a failed download is no member), and each metadata file beside them, NNNNN.parquet and
    # NNNNN_stats.json, is one damaged_shard row; the launcher says which pattern reads the tars only.
    folder = tmp_path / "laion"
    cat, coffee, rocket = (
        (photo_dir / name).read_bytes() for name in ("cat.png", "coffee.jpg", "rocket.gif")
    )
    write_img2dataset(folder, [[cat, None, coffee], [rocket]])
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        line = run_here(
            capsys,
            *("--input_format", "webdataset", "--input", f"{folder}/*"),
            *("--output", out, "--weights", npz_path),
        )
    assert line.startswith(
        "summary: 7 inputs from 6 shard(s), 3 labelled, 4 failed (read 4, decode 0, inference 0)"
    )
    assert outcome(read_rows, out) == {
        "00000.tar#000000000": None,
        "00000.tar#000000002": None,
        "00001.tar#000010000": None,
        "00000.parquet": "damaged_shard",
        "00000_stats.json": "damaged_shard",
        "00001.parquet": "damaged_shard",
        "00001_stats.json": "damaged_shard",
    }
    assert any(f"pass --input '{folder}/*.tar')" in r.getMessage() for r in caplog.records)


def test_weights_that_fail_their_crc_are_one_error_line(photo_dir, npz_path, tmp_path, capsys):
    # A bit flipped inside fc7's kernel: the npz's headers, keys and shapes are intact, and
    # only its CRC-32 tells. The launcher reads the whole file before anything is submitted.
    shard = pack(sorted(photo_dir.glob("*.jpg")), "webdataset", tmp_path / "in")
    data = bytearray(open(npz_path, "rb").read())
    with zipfile.ZipFile(npz_path) as archive:
        member = archive.getinfo("fc7_W.npy")
    name_length, extra_length = struct.unpack(
        "<HH", data[member.header_offset + 26 : member.header_offset + 30]
    )
    data[member.header_offset + 30 + name_length + extra_length + member.compress_size // 2] ^= 0x01
    bad = tmp_path / "vgg16.npz"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    code = run.main(
        ["--input_format", "webdataset", "--input", shard, "--output", str(out), "--weights", str(bad)]
    )
    assert (code, capsys.readouterr().err) == (
        2,
        f"error: {bad}: member 'fc7_W.npy' is damaged (Bad CRC-32 for file 'fc7_W.npy'); "
        "the file is corrupt: copy or download it again.\n",
    )
    assert not out.exists()
