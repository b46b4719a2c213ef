"""Uploaded feedback files go straight to disk, a chunk at a time, never whole into memory.

`ImportUploadHandler` replaces Django's upload handlers for the import endpoints: each chunk is
written to a new file under DATA_DIR/uploads as it arrives, and an upload that grows past
PROSPECT_IMPORT_MAX_UPLOAD_BYTES is refused (413) and its partial file removed, whatever the
request claimed its length to be. The import job then reads (and finally deletes) that file.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler

from config.edge import PayloadTooLarge
from feedback.services.jobs import upload_dir

_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def safe_filename(name: str) -> str:
    """A file name fit for a database column and a page: no control characters, no surrogates, no path."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become "?"
    name = _UNSAFE_NAME.sub("_", os.path.basename(name)).strip()
    return name[:200] or "upload.jsonl"


class SavedUpload(UploadedFile):
    """An uploaded file already on disk at `saved_path` (owned by whoever takes it next)."""

    def __init__(self, file, saved_path: str, **kwargs):
        super().__init__(file, **kwargs)
        self.saved_path = saved_path

    def discard(self) -> None:
        self.close()
        try:
            os.unlink(self.saved_path)
        except FileNotFoundError:
            pass


class ImportUploadHandler(FileUploadHandler):
    def new_file(self, field_name, file_name, content_type, content_length, charset=None, content_type_extra=None):
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        self.limit = settings.PROSPECT_IMPORT_MAX_UPLOAD_BYTES
        handle, self.path = tempfile.mkstemp(dir=upload_dir(), prefix="upload-", suffix=".jsonl")
        self.file = os.fdopen(handle, "w+b")
        self.size = 0

    def receive_data_chunk(self, raw_data, start):
        self.size += len(raw_data)
        if self.size > self.limit:
            self.file.close()
            os.unlink(self.path)
            raise PayloadTooLarge(f"the file is larger than the upload limit of {self.limit} bytes")
        self.file.write(raw_data)
        return None  # consumed: no later handler sees it

    def file_complete(self, file_size):
        self.file.flush()
        self.file.seek(0)
        return SavedUpload(
            self.file,
            self.path,
            name=safe_filename(self.file_name),
            content_type=self.content_type,
            size=file_size,
            charset=self.charset,
        )

    def upload_interrupted(self):
        if getattr(self, "file", None) is not None:
            self.file.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def claim_upload(upload) -> SavedUpload:
    """The upload as a file of ours under DATA_DIR/uploads, under the size cap (413 beyond it).

    An import usually arrives through ImportUploadHandler already. A browser session's CSRF check
    reads the form before the view can install that handler, and Django's own handlers then
    took the file (into a temporary file, or memory when small): it is copied over a chunk at a time.
    """
    if isinstance(upload, SavedUpload):
        return upload
    handler = ImportUploadHandler(None)
    handler.new_file("file", upload.name, upload.content_type, upload.size, upload.charset)
    size = 0
    for chunk in upload.chunks():
        handler.receive_data_chunk(chunk, size)
        size += len(chunk)
    upload.close()
    return handler.file_complete(size)
