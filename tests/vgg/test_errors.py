"""vgg.errors: the one base of per-input errors, its stable error_type, and pickling across processes."""

from __future__ import annotations

import pickle

from tests.modules import imported_modules
from vgg import errors
from vgg.errors import ClassifiedError
from vgg.preprocess import ImageError


def test_error_type_and_detail_survive_pickling():
    error = ClassifiedError("not_found", "gs://b/x.jpg: 404")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.error_type, copy.detail, str(copy)) == (
        ClassifiedError,
        "not_found",
        "gs://b/x.jpg: 404",
        "gs://b/x.jpg: 404",
    )


def test_subclasses_keep_their_type_and_their_own_message_form():
    # ImageError is also a ValueError and reads "error_type: detail"; a pickled copy is the same.
    error = pickle.loads(pickle.dumps(ImageError("truncated", "ends after 10 bytes")))
    assert isinstance(error, ClassifiedError) and isinstance(error, ValueError)
    assert (error.error_type, str(error)) == ("truncated", "truncated: ends after 10 bytes")


def test_imports_nothing():
    # vgg.preprocess (hence every Beam worker and the launcher) imports it: it must stay a leaf.
    assert imported_modules(errors) == {"__future__"}
